"""Zero123Teacher on a tiny random-weight model built from configs (diffusers layout of kxic/zero123-xl)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.teachers.zero123 import CLIP_MEAN, CLIP_STD, Zero123Teacher, relative_camera

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from tests.tiny_sd import save_tiny_zero123

    return save_tiny_zero123(tmp_path_factory.mktemp("zero123") / "model")


@pytest.fixture(scope="module")
def teacher(folder) -> Zero123Teacher:
    model = Zero123Teacher(str(folder), resolution=64)
    reference = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    model.set_reference(reference, elevation=10.0, azimuth=30.0, distance=2.5)
    return model


def test_relative_camera_matches_hand_computed_values():
    elevation, azimuth, distance = torch.tensor([40.0, -10.0]), torch.tensor([120.0, -170.0]), torch.tensor([3.0, 2.5])
    zero123 = relative_camera(elevation, azimuth, distance, (10.0, 30.0, 2.5), "zero123")
    # polar = 90 - elevation: (90 - 40) - (90 - 10) = -30 degrees; azimuth 120 - 30 = 90; distance 3.0 - 2.5
    expected = [[math.radians(-30.0), 1.0, 0.0, 0.5],
                # (90 + 10) - 80 = 20 degrees; -170 - 30 = -200 -> wrapped to 160 degrees; 2.5 - 2.5
                [math.radians(20.0), math.sin(math.radians(160.0)), math.cos(math.radians(160.0)), 0.0]]
    torch.testing.assert_close(zero123, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    stable = relative_camera(elevation, azimuth, distance, (10.0, 30.0, 2.5), "stable-zero123")
    torch.testing.assert_close(stable[:, :3], zero123[:, :3])
    torch.testing.assert_close(stable[:, 3], torch.full((2,), math.radians(80.0), dtype=torch.float64))


def test_cfg_drops_both_conditions_and_the_conditioned_branch_is_zero123s(teacher):
    gen = torch.Generator().manual_seed(1)
    z_t = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([300, 300])
    cameras = cameras_from_spherical(torch.tensor([40.0]), torch.tensor([120.0]), torch.tensor(3.0),
                                     torch.tensor(40.0))
    eps = teacher.predict_noise(z_t, t, teacher.embed(["go", ""]), cameras)
    with torch.no_grad():
        # the unconditional row: zero cross-attention conditioning and a zero reference latent
        uncond = teacher.unet(torch.cat([z_t[1:], torch.zeros(1, 4, 8, 8)], 1), t[1:],
                              encoder_hidden_states=torch.zeros(1, 1, 32)).sample
        # the conditioned row, from the parts: CLIP embedding of the reference + camera -> cc_projection;
        # the reference's unscaled VAE latent (mode) concatenated to the noisy latent
        T = relative_camera(torch.tensor([40.0]), torch.tensor([120.0]), torch.tensor([3.0]), (10.0, 30.0, 2.5))
        crossattn = teacher.cc_projection(torch.cat([teacher.c_crossattn, T[:, None].float()], -1))
        cond = teacher.unet(torch.cat([z_t[:1], teacher.c_concat], 1), t[:1], encoder_hidden_states=crossattn).sample
    torch.testing.assert_close(eps[1:], uncond)
    torch.testing.assert_close(eps[:1], cond)
    assert not torch.allclose(eps[0], eps[1])


def test_reference_embeddings_are_clip_and_vae_of_the_image(folder):
    model = Zero123Teacher(str(folder), resolution=64)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))
    model.set_reference(image, 0.0, 0.0, 2.5)
    with torch.no_grad():
        latent = model.vae.encode(2.0 * image[None] - 1.0).latent_dist.mode()
        clip = F.interpolate(image[None], size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
        clip = (clip.clamp(0, 1) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        embeds = model.image_encoder(pixel_values=clip).image_embeds
    torch.testing.assert_close(model.c_concat, latent)
    torch.testing.assert_close(model.c_crossattn, embeds[:, None])


def test_gradients_reach_the_scene(folder, tmp_path):
    from dreamengine.config import load_config
    from dreamengine.trainer import Trainer
    from tests.test_image_to_3d import toy_render_png

    image = toy_render_png(tmp_path / "cube.png", "a red cube", 0.0, 0.0, size=32)
    cfg = load_config("zero123-toy", ["teacher.name=zero123", f"teacher.model={folder}", "teacher.resolution=64",
                                      f"image.path={image}", "camera.height=24", "camera.width=24",
                                      "render.num_samples=16", "image.lambda_rgb=0", "image.lambda_mask=0"],
                      prompt="a red cube")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train_step()
    grads = [p.grad for p in trainer.scene.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)  # the guidance alone moved the scene


def test_unknown_variant_and_wrong_folders_are_refused(folder, tmp_path):
    from dreamengine.errors import ConfigError, DreamEngineError

    with pytest.raises(ConfigError, match="variant"):
        Zero123Teacher(str(folder), variant="zero124")
    with pytest.raises(DreamEngineError, match="not a Zero123"):
        Zero123Teacher(str(tmp_path))
