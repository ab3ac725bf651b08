"""Where Gaussian scenes start: analytic shapes, mesh files, NeRF runs; and their clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamengine.config.scenes import GaussiansConfig
from dreamengine.errors import ConfigError, DreamEngineError, PromptError
from dreamengine.export import save_mesh
from dreamengine.scenes.gaussians import GaussianScene, sh_dc_to_rgb
from dreamengine.toyworld import parse_prompt
from dreamengine.toyworld.objects import SHAPES


def test_shape_init_places_points_just_inside_the_surface() -> None:
    scene = GaussianScene(GaussiansConfig(init="shape", init_shape="cube", num_points=2000,
                                          init_random_color=False, init_color=(0.2, 0.4, 0.6)))
    means = scene.means.detach()
    distance = SHAPES["cube"]()(means)
    assert scene.num_gaussians == 2000
    assert float(distance.max()) < 0 and float(distance.min()) > -0.05 - 1e-6  # the shell inside the cube
    assert torch.allclose(sh_dc_to_rgb(scene.sh_dc.detach()[:, 0]), torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)
    # the shell covers every face of the cube: each axis reaches both sides
    assert float(means.amax(0).min()) > 0.35 and float(means.amin(0).max()) < -0.35


def test_shape_init_from_a_toy_prompt_takes_its_colors() -> None:
    scene = GaussianScene(GaussiansConfig(init="shape", init_shape="a snowman", num_points=1500))
    snowman = parse_prompt("a snowman")
    means = scene.means.detach()
    assert float(snowman.sdf(means).max()) < 0
    assert torch.allclose(sh_dc_to_rgb(scene.sh_dc.detach()[:, 0]), snowman.color(means).float(), atol=1e-5)


def test_shape_init_rejects_unknown_words() -> None:
    with pytest.raises(PromptError, match="teapot"):
        GaussianScene(GaussiansConfig(init="shape", init_shape="a teapot"))


def test_mesh_init_samples_the_surface_with_its_vertex_colors(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(1.0, 0.5, 0.25))
    box.visual.vertex_colors = np.tile([0, 255, 0, 255], (len(box.vertices), 1))
    path = save_mesh(box, tmp_path / "box.glb", "glb", {})
    raw = GaussianScene(GaussiansConfig(init="mesh", init_path=str(path), num_points=800, init_mesh_normalize=False))
    means = raw.means.detach().double().numpy()
    distance = np.abs(trimesh.proximity.signed_distance(box, means))
    assert distance.max() < 1e-4  # on the box's surface, in the world frame the GLB was written from
    colors = sh_dc_to_rgb(raw.sh_dc.detach()[:, 0])
    assert torch.allclose(colors, torch.tensor([0.0, 1.0, 0.0]), atol=1e-2)
    normalized = GaussianScene(GaussiansConfig(init="mesh", init_path=str(path), num_points=800, init_radius=0.6))
    assert float(normalized.means.detach().norm(dim=-1).max()) == pytest.approx(0.6, abs=1e-5)


@pytest.mark.parametrize("content,match", [(None, "does not exist"), (b"not a mesh at all", "cannot use"),
                                           (b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n", "cannot use")])
def test_mesh_init_errors(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "input.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DreamEngineError, match=match):
        GaussianScene(GaussiansConfig(init="mesh", init_path=str(path)))


def test_inits_that_read_files_need_a_path() -> None:
    for init in ("mesh", "nerf", "ply"):
        with pytest.raises(ConfigError, match="init_path"):
            GaussianScene(GaussiansConfig(init=init))


def test_nerf_init_follows_the_density_of_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamengine.build import build_scene, build_scenes
    from dreamengine.checkpoint import save_checkpoint, scenes_state_dict
    from dreamengine.config import config_to_yaml, load_config
    from dreamengine.scenes.nerf import NeRFScene
    from tests.cli_helpers import TINY

    cfg = load_config("quickstart", [*TINY, "export.threshold=5.0"], prompt="a red cube")
    run_dir = tmp_path / "nerf-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    scenes, background, renderers = build_scenes(cfg, torch.device("cpu"))
    save_checkpoint({"step": 1, **scenes_state_dict(scenes, background, renderers)}, run_dir / "ckpt" / "last.pt")
    # a field of known shape: density 50 inside a ball of radius 0.4 (above the run's level 5), red
    monkeypatch.setattr(NeRFScene, "density", lambda self, points: 50.0 * (points.norm(dim=-1) < 0.4).float())
    monkeypatch.setattr(NeRFScene, "albedo", lambda self, points: torch.tensor([1.0, 0.0, 0.0]).expand(len(points), 3))
    scene = build_scene(GaussiansConfig(init="nerf", init_path=str(run_dir), num_points=500))
    radius = scene.means.detach().norm(dim=-1)
    cell = 2.0 / 63
    assert float(radius.max()) < 0.4 + cell and float(radius.min()) < 0.2  # fills the ball, not only its surface
    assert torch.allclose(sh_dc_to_rgb(scene.sh_dc.detach()[:, 0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)


def test_nerf_init_refuses_a_non_nerf_run(tmp_path: Path) -> None:
    from dreamengine.build import build_scene
    from dreamengine.config import config_to_yaml, load_config

    cfg = load_config("gaussian-toy", prompt="a red cube")
    (tmp_path / "config.yaml").write_text(config_to_yaml(cfg))
    with pytest.raises(ConfigError, match="NeRF run"):
        build_scene(GaussiansConfig(init="nerf", init_path=str(tmp_path)))
