"""render.albedo_warmup_steps (threestudio's ambient_only_steps): albedo renders before the step, the configured
shading from it on, for the volume and mesh renderers; the step count travels with the renderer's state."""

from __future__ import annotations

import pytest
import torch
import trimesh

from dreamengine.config.run import RenderConfig
from dreamengine.config.scenes import NeRFConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.renderers.raster import RasterRenderer, mesh_tensors_from_trimesh
from dreamengine.renderers.volume import VolumeRenderer
from dreamengine.scenes.nerf import NeRFScene

TINY_NERF = NeRFConfig(num_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=2,
                       per_level_scale=2.0, hidden_dim=8, encoding_backend="torch")


def cameras():
    return cameras_from_spherical(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 2.5),
                                  torch.full((2,), 40.0))


def volume(shading: str, warmup: int = 0) -> VolumeRenderer:
    cfg = RenderConfig(num_samples=8, shading=shading, albedo_warmup_steps=warmup, backend="torch",
                       occupancy_grid=False)
    return VolumeRenderer(cfg, 1.0, torch.device("cpu"))


def render(renderer, scene, seed: int = 3):
    return renderer(scene, Background(), cameras(), 6, 6, generator=torch.Generator().manual_seed(seed), perturb=True)


def test_volume_warmup_renders_albedo_before_the_step_and_the_shading_from_it() -> None:
    torch.manual_seed(0)
    scene = NeRFScene(TINY_NERF)
    warm = volume("diffuse", warmup=3)
    albedo, diffuse = render(volume("albedo"), scene).rgb, render(volume("diffuse"), scene).rgb
    assert not torch.allclose(albedo, diffuse)
    for step in (0, 1, 2):
        warm.after_step(scene, step)  # steps done: the next render is step `step`'s
        out = render(warm, scene)
        assert torch.equal(out.rgb, albedo), step
        assert out.orientation_loss is not None  # normals for loss.lambda_orient, as with diffuse shading
    warm.after_step(scene, 3)
    assert torch.equal(render(warm, scene).rgb, diffuse)


def test_volume_warmup_off_renders_the_shading_and_saves_no_step() -> None:
    torch.manual_seed(0)
    scene = NeRFScene(TINY_NERF)
    plain = volume("diffuse")
    assert "steps_done" not in plain.state_dict()
    assert torch.equal(render(plain, scene).rgb, render(volume("diffuse"), scene).rgb)


def test_the_warmup_step_count_is_saved_and_restored() -> None:
    torch.manual_seed(0)
    scene = NeRFScene(TINY_NERF)
    trained = volume("textureless", warmup=5)
    trained.after_step(scene, 7)
    resumed = volume("textureless", warmup=5)
    assert resumed.warmup.shading == "albedo"
    resumed.load_state_dict(trained.state_dict())
    assert resumed.warmup.shading == "textureless" and resumed.warmup.steps_done == 7
    before = volume("textureless", warmup=5)
    before.load_state_dict({})  # a checkpoint from before the warm-up existed
    assert before.warmup.steps_done == 0
    with pytest.raises(ConfigError, match="albedo_warmup_steps"):
        volume("diffuse", warmup=-1)


def test_mesh_warmup_renders_albedo_before_the_step() -> None:
    sphere = mesh_tensors_from_trimesh(trimesh.creation.icosphere(subdivisions=1, radius=0.6))
    sphere.vertex_colors = torch.full_like(sphere.vertices, 0.5)

    def raster(shading: str, warmup: int = 0) -> RasterRenderer:
        cfg = RenderConfig(shading=shading, albedo_warmup_steps=warmup, backend="torch")
        return RasterRenderer(cfg, 1.0, torch.device("cpu"))

    def rgb(renderer):
        return renderer(sphere, Background(), cameras(), 8, 8, generator=torch.Generator().manual_seed(1)).rgb

    warm = raster("diffuse", warmup=2)
    assert torch.equal(rgb(warm), rgb(raster("albedo")))
    warm.after_step(sphere, 2)
    assert torch.equal(rgb(warm), rgb(raster("diffuse")))
    assert warm.state_dict() == {"steps_done": 2} and raster("diffuse").state_dict() == {}
