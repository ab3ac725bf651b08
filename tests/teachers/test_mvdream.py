"""MVDreamTeacher on a tiny random-weight MVDream: both ways of loading it, the cross-view attention, the dependence
between the views of a group, the camera convention against hand-computed matrices, clear loading errors."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dreamengine.config.guidance import MVDreamSDSConfig, VSDConfig  # noqa: E402
from dreamengine.config.prompts import PromptConfig  # noqa: E402
from dreamengine.config.teachers import MVDreamTeacherConfig  # noqa: E402
from dreamengine.core.cameras import CameraSampler, cameras_from_spherical  # noqa: E402
from dreamengine.core.protocols import TeacherContext  # noqa: E402
from dreamengine.errors import ConfigError  # noqa: E402
from dreamengine.guidance.mvdream_sds import MVDreamSDSGuidance  # noqa: E402
from dreamengine.guidance.vsd import VSDGuidance  # noqa: E402
from dreamengine.prompts import PromptProcessor  # noqa: E402
from dreamengine.teachers.multiview_attention import MultiViewAttnProcessor  # noqa: E402
from dreamengine.teachers.mvdream import MVDreamTeacher, mvdream_camera  # noqa: E402
from dreamengine.teachers.mvdream_weights import convert_to_diffusers_folder  # noqa: E402
from dreamengine.teachers.stable_diffusion import ModelNotFoundError  # noqa: E402
from tests.tiny_mvdream import save_tiny_mvdream  # noqa: E402

CONTEXT = TeacherContext(distance=2.5, fovy_deg=40.0, background=(1.0, 1.0, 1.0), view_thresholds=(45, 45, 60),
                         device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream"))


@pytest.fixture(scope="module")
def teacher(tiny):
    return MVDreamTeacher(str(tiny["diffusers"]))


def group(first_azimuths: list[float], elevation: float = 15.0):
    azimuth = torch.tensor([a + 90.0 * k for a in first_azimuths for k in range(4)])
    return cameras_from_spherical(torch.full_like(azimuth, elevation), azimuth, torch.tensor(2.5), torch.tensor(40.0))


# ---------------------------------------------------------------------------------------------------- cameras
def test_camera_matrices_match_hand_computed_ones():
    """Row-major flattened OpenGL camera-to-world in the Z-up world, translation of unit length."""
    cameras = cameras_from_spherical(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.5, 1.7]),
                                     torch.tensor(40.0))
    h = math.sqrt(3) / 2
    expected = torch.tensor([
        # elevation 0, azimuth 0 (the front): camera on +X looking at -X; right +Y, up +Z, backwards +X
        [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        # elevation 30, azimuth 90: camera at (0, cos 30, sin 30); right -X, up (0, -1/2, cos 30)
        [-1, 0, 0, 0, 0, -0.5, h, h, 0, h, 0.5, 0.5, 0, 0, 0, 1],
    ], dtype=torch.float32)
    assert torch.allclose(mvdream_camera(cameras), expected, atol=1e-6)


def mvdream_reference_camera(elevation: float, azimuth: float) -> torch.Tensor:
    """MVDream's own construction (mvdream/camera_utils.py, written out from its formulas): a look-at camera on the
    unit sphere of a Y-up world at (cos e sin a, sin e, cos e cos a), columns (right, up, -forward, position), then
    the OpenGL-to-Blender change of world axes (x, y, z) -> (x, -z, y)."""
    e, a = math.radians(elevation), math.radians(azimuth)
    position = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)], dtype=torch.float64)
    forward = -position / position.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up / up.norm(), -forward, position
    flip = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return (flip @ c2w).reshape(16)


@pytest.mark.parametrize("elevation", [-10.0, 0.0, 15.0, 45.0])
def test_camera_matrices_equal_mvdreams_own_with_azimuth_shifted_by_90(elevation):
    """MVDream's get_camera(elevation, a) is our camera at azimuth a - 90 (its --camera_azim 90 is our front)."""
    azimuths = [0.0, 37.0, 90.0, 180.0, -135.0]
    ours = mvdream_camera(cameras_from_spherical(torch.full((5,), elevation), torch.tensor(azimuths),
                                                 torch.tensor(3.0), torch.tensor(40.0)))
    theirs = torch.stack([mvdream_reference_camera(elevation, a + 90.0) for a in azimuths]).float()
    assert torch.allclose(ours, theirs, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- loading
def test_checkpoint_and_diffusers_folder_load_the_same_model(tiny, teacher):
    from_checkpoint = MVDreamTeacher.from_config(
        MVDreamTeacherConfig(model=str(tiny["checkpoint"]), base_model=str(tiny["diffusers"]),
                             original_config=str(tiny["config"])), CONTEXT)
    assert teacher.resolution == from_checkpoint.resolution == 64 and teacher.views_per_group == 4
    ours, theirs = teacher.unet.state_dict(), from_checkpoint.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(from_checkpoint.unet.class_embedding.linear_1.weight,
                       teacher.unet.class_embedding.linear_1.weight)  # MVDream's camera_embed.0
    assert torch.allclose(teacher.alphas_cumprod, from_checkpoint.alphas_cumprod)
    z_t, t = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((8,), 400)
    text = teacher.embed(["a cat"]).expand(8, -1, -1)
    cameras = group([10.0, -70.0])
    assert torch.allclose(teacher.predict_noise(z_t, t, text, cameras),
                          from_checkpoint.predict_noise(z_t, t, text, cameras), atol=1e-6)
    rgb = torch.rand(1, 3, 64, 64)
    assert torch.allclose(teacher.encode(rgb), from_checkpoint.encode(rgb), atol=1e-6)


def test_a_converted_checkpoint_loads_as_a_diffusers_folder(tiny, teacher, tmp_path):
    folder = convert_to_diffusers_folder(tiny["checkpoint"], tmp_path / "converted", str(tiny["diffusers"]),
                                         str(tiny["config"]))
    converted = MVDreamTeacher(str(folder))
    assert converted.unet.config.class_embed_type == "projection"
    z_t, t = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.full((4,), 250)
    text, cameras = teacher.embed(["a dog"]).expand(4, -1, -1), group([33.0])
    assert torch.allclose(converted.predict_noise(z_t, t, text, cameras), teacher.predict_noise(z_t, t, text, cameras),
                          atol=1e-6)


def test_missing_partial_and_single_view_models_fail_clearly(tiny, tmp_path):
    def load(path, **kwargs):
        return MVDreamTeacher(str(path), base_model=str(tiny["diffusers"]), original_config=str(tiny["config"]),
                              **kwargs)

    with pytest.raises(ModelNotFoundError, match="does not exist.*hf download MVDream/MVDream"):
        load(tmp_path / "sd-v2.1-base-4view.pt")
    state = torch.load(tiny["checkpoint"], weights_only=True)
    no_camera = {k: v for k, v in state.items() if "camera_embed" not in k}
    torch.save(no_camera, tmp_path / "no-camera.pt")
    with pytest.raises(ModelNotFoundError, match="no the camera embedding.*single-view Stable Diffusion"):
        load(tmp_path / "no-camera.pt")
    partial = {k: v for k, v in state.items() if "output_blocks.1." not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ModelNotFoundError, match="UNet in MVDream checkpoint .* incomplete.*missing weights"):
        load(tmp_path / "partial.pt")
    (tmp_path / "truncated.pt").write_bytes(tiny["checkpoint"].read_bytes()[:5000])
    with pytest.raises(ModelNotFoundError, match="could not read the MVDream checkpoint.*truncated"):
        load(tmp_path / "truncated.pt")
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        MVDreamTeacher(str(tmp_path))  # a folder, but no diffusers model
    from tests.tiny_sd import save_tiny_sd

    with pytest.raises(ModelNotFoundError, match="no MVDream camera embedding.*teacher.name=stable-diffusion"):
        MVDreamTeacher(str(save_tiny_sd(tmp_path / "sd")))


# ---------------------------------------------------------------------------------------------------- attention
def test_cross_view_attention_with_one_view_is_self_attention_and_with_four_attends_across(teacher):
    from diffusers.models.attention_processor import AttnProcessor2_0

    attention = teacher.unet.mid_block.attentions[0].transformer_blocks[0].attn1  # a self-attention layer
    tokens = torch.randn(8, 5, attention.query_dim, generator=torch.Generator().manual_seed(0))
    processor = MultiViewAttnProcessor()
    with torch.no_grad():
        plain = AttnProcessor2_0()(attention, tokens)
        assert torch.allclose(processor(attention, tokens, num_views=1), plain, atol=1e-6)
        joint = processor(attention, tokens, num_views=4)
        # brute force: each group's 4 x 5 tokens attend to each other, head by head
        q, k, v = attention.to_q(tokens), attention.to_k(tokens), attention.to_v(tokens)
        heads, dim = attention.heads, q.shape[-1] // attention.heads

        def split(x):  # [8, 5, heads * dim] -> [2 groups, heads, 20 tokens, dim]
            return x.reshape(2, 20, heads, dim).transpose(1, 2)

        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim), dim=-1)
        expected = attention.to_out[0]((weights @ split(v)).transpose(1, 2).reshape(8, 5, heads * dim))
    assert torch.allclose(joint, expected, atol=1e-5)
    assert not torch.allclose(joint, plain, atol=1e-3)


def test_the_views_of_a_group_depend_on_each_other_and_on_their_cameras(teacher):
    generator = torch.Generator().manual_seed(1)
    z_t, t = torch.randn(8, 4, 8, 8, generator=generator), torch.full((8,), 500)
    text = teacher.embed(["a cat"]).expand(8, -1, -1)
    cameras = group([0.0, 45.0])
    eps = teacher.predict_noise(z_t, t, text, cameras)
    perturbed = z_t.clone()
    perturbed[2] += torch.randn(4, 8, 8, generator=generator)  # view 2 of the first object
    eps_perturbed = teacher.predict_noise(perturbed, t, text, cameras)
    assert (eps_perturbed[1] - eps[1]).abs().max() > 1e-4  # view 1 of the same object sees it
    assert torch.allclose(eps_perturbed[4:], eps[4:], atol=1e-6)  # the other object does not
    alone, alone_perturbed = teacher.predict_noise(z_t, t, text), teacher.predict_noise(perturbed, t, text)
    assert torch.allclose(alone[1], alone_perturbed[1], atol=1e-6)  # without cameras each image is alone
    turned = teacher.predict_noise(z_t, t, text, group([30.0, 75.0], elevation=40.0))
    assert (turned - eps).abs().max() > 1e-4  # the camera embedding conditions every view
    doubled = teacher.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([text, text]), cameras)
    assert torch.allclose(doubled[8:], eps, atol=1e-6)  # copies of a batch reuse the cameras
    with pytest.raises(ValueError, match="whole groups of 4 views"):
        teacher.predict_noise(z_t[:6], t[:6], text[:6], cameras[:6])


def test_mvdream_sds_runs_on_the_teacher_and_vsd_is_refused(teacher):
    cameras = CameraSampler(views_per_group=4).sample(4, torch.Generator().manual_seed(3))
    prompts = PromptProcessor(teacher, "a cat", PromptConfig(view_dependent=False, cache_embeddings=False))(cameras)
    guidance = MVDreamSDSGuidance(MVDreamSDSConfig(), teacher, 100)
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    out = guidance(rgb, prompts, cameras, 10, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert rgb.grad is not None and bool(torch.isfinite(rgb.grad).all()) and float(rgb.grad.abs().max()) > 0
    with pytest.raises(ConfigError, match="vsd does not work with a multi-view teacher"):
        VSDGuidance(VSDConfig(), teacher, 100)
    with pytest.raises(ConfigError, match="vsd does not work with teacher.name=mvdream"):
        teacher.add_lora_adapter(4, 4.0)
