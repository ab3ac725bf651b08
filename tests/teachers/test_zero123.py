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


class TrainerCallback:
    """Stands for a training checkpoint's pickled Python objects (PyTorch Lightning's callbacks): loading must never
    build one."""

    built = 0

    def __setstate__(self, state):
        TrainerCallback.built += 1
        self.__dict__.update(state)


def test_ldm_checkpoint_with_training_objects_loads_as_the_diffusers_folder(folder, tmp_path):
    """An original Zero123 checkpoint (LDM keys, a Lightning-style ``state_dict`` with pickled callbacks beside it)
    converts to exactly the weights of the same model's diffusers folder, without unpickling the callbacks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    from dreamengine.teachers.zero123 import load_ldm_checkpoint
    from tests.tiny_mvdream import ldm_unet_state, ldm_vae_state

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    projection = load_file(str(folder / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    state = {**ldm_unet_state(unet), **ldm_vae_state(vae),
             **{"cc_projection." + key.removeprefix("projection."): value for key, value in projection.items()}}
    callback = TrainerCallback()
    callback.monitor = "val/loss"
    path = tmp_path / "zero123-tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 105000, "callbacks": {"checkpoint": callback}}, path)
    with pytest.raises(Exception, match="Weights only load failed"):  # what a plain safe load makes of it
        torch.load(path, weights_only=True)

    loaded_unet, loaded_vae, encoder, loaded_projection, scheduler = load_ldm_checkpoint(
        path, str(folder / "image_encoder"), configs=folder)
    assert TrainerCallback.built == 0
    for ours, theirs in ((loaded_unet, unet), (loaded_vae, vae)):
        expected = theirs.state_dict()
        assert set(ours.state_dict()) == set(expected)
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(loaded_projection.weight, projection["projection.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded_projection.bias, projection["projection.bias"], rtol=0, atol=0)
    assert scheduler["prediction_type"] == "epsilon"
    assert encoder.config.projection_dim == unet.config.cross_attention_dim


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path, with the hub out of reach."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_stable_zero123_by_file_name_says_where_to_download_it(offline_hub):
    from dreamengine.teachers.stable_diffusion import ModelNotFoundError

    with pytest.raises(ModelNotFoundError) as caught:
        Zero123Teacher("stable_zero123.ckpt", variant="stable-zero123")
    text = str(caught.value)
    assert "hf download stabilityai/stable-zero123 stable_zero123.ckpt --local-dir DIR" in text
    assert "teacher.model=DIR/stable_zero123.ckpt" in text and "not in the Hugging Face cache" in text


def test_stable_zero123_by_file_name_is_read_from_the_hub_cache(offline_hub):
    from dreamengine.teachers.zero123 import checkpoint_file

    snapshot = offline_hub / "models--stabilityai--stable-zero123" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "stable_zero123.ckpt").write_bytes(b"weights")
    (offline_hub / "models--stabilityai--stable-zero123" / "refs").mkdir()
    (offline_hub / "models--stabilityai--stable-zero123" / "refs" / "main").write_text("0" * 40)
    assert checkpoint_file("stable_zero123.ckpt", None) == snapshot / "stable_zero123.ckpt"


def test_a_checkpoint_name_that_is_no_file_is_refused_clearly(tmp_path, monkeypatch):
    from dreamengine.teachers.stable_diffusion import ModelNotFoundError
    from dreamengine.teachers.zero123 import checkpoint_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"zero123-xl\.ckpt: no such checkpoint file"):
        checkpoint_file("zero123-xl.ckpt", None)
    assert checkpoint_file("kxic/zero123-xl", None) is None  # a diffusers repo id: loaded as a folder
    (tmp_path / "mine.ckpt").write_bytes(b"")
    assert checkpoint_file("mine.ckpt", None) == Path("mine.ckpt")


def test_an_unreachable_hub_is_reported_without_trying_to_download(tmp_path, monkeypatch):
    """With no HF_HUB_OFFLINE but a hub that refuses connections, the cache is read and the download is never
    attempted (the hub client would retry for ~25 s before failing)."""
    import huggingface_hub
    from huggingface_hub import constants

    from dreamengine.teachers.stable_diffusion import ModelNotFoundError
    from dreamengine.teachers.weights import PROXY_VARIABLES, download_checkpoint, hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    real = huggingface_hub.hf_hub_download

    def counting(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counting)
    assert not hub_reachable()
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        download_checkpoint("stabilityai/stable-zero123", "stable_zero123.ckpt", None)
    assert calls == [True]  # the cache only
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_reachable()  # behind a proxy the client decides
