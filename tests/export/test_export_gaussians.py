"""Exporting Gaussian scenes: the scattered density grid equals point queries; the textured export works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamengine.config import ExportConfig
from dreamengine.config.scenes import GaussiansConfig
from dreamengine.export import load_mesh
from dreamengine.export.marching import sample_density_grid
from dreamengine.export.scene_export import density_volume, export_scene
from dreamengine.export.texture import evaluate_field, spatial_order
from dreamengine.scenes.gaussian_grid import gaussian_albedo_field, gaussian_density_grid
from dreamengine.scenes.gaussians import GaussianScene, rgb_to_sh_dc
from dreamengine.toyworld import parse_prompt
from tests.gltf_validator import assert_valid_glb


def filled_gaussians(prompt: str, count: int, seed: int = 0) -> GaussianScene:
    """Gaussians filling a toy object (random anisotropic scales and rotations), colored like it."""
    obj = parse_prompt(prompt)
    generator = torch.Generator().manual_seed(seed)
    candidates = (torch.rand(40 * count, 3, generator=generator) * 2 - 1) * 0.8
    inside = candidates[obj.sdf(candidates) < 0][:count]
    scene = GaussianScene(GaussiansConfig(num_points=len(inside), init_scale=0.025, init_opacity=0.6))
    with torch.no_grad():
        scene.means.copy_(inside)
        scene.sh_dc.copy_(rgb_to_sh_dc(obj.color(inside))[:, None, :])
        scene.log_scales.add_(0.3 * torch.randn(scene.log_scales.shape, generator=generator))
        scene.quats.copy_(torch.randn(scene.quats.shape, generator=generator))
    return scene


def test_scattered_grid_equals_point_queries():
    scene = filled_gaussians("a snowman", 1500)
    for resolution, radius in ((17, 1.0), (24, 0.7)):  # odd and even grids; a radius that cuts Gaussians off
        expected = sample_density_grid(scene.density, radius, resolution)
        ours = gaussian_density_grid(scene, radius, resolution, max_pairs=5000)  # many small batches
        assert expected.max() > 1.0
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    assert np.array_equal(density_volume(scene, 17), gaussian_density_grid(scene, 1.0, 17))


def test_gridded_albedo_approximates_point_queries():
    scene = filled_gaussians("a snowman", 3000)
    field = gaussian_albedo_field(scene, 1.0, 64)
    jitter = 0.01 * torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
    points = torch.cat([scene.means[:2000].detach() + jitter,
                        torch.tensor([[0.95, 0.95, 0.95]])])  # near the Gaussians, and one far from all of them
    exact = scene.albedo(points)
    ours = field(points)
    error = (ours - exact).abs().amax(dim=-1)
    assert float(error.median()) < 0.02 and float((error < 0.1).float().mean()) > 0.95
    assert torch.allclose(ours[-1], exact[-1])  # no Gaussian reaches: the nearest mean's color, exactly


def test_evaluate_field_in_spatial_order_returns_values_in_input_order():
    points = np.random.default_rng(0).uniform(-1, 1, size=(5000, 3))
    order = spatial_order(points)
    assert sorted(order.tolist()) == list(range(5000))
    steps = np.linalg.norm(np.diff(points[order], axis=0), axis=1)
    assert steps.mean() < 0.25 * np.linalg.norm(np.diff(points, axis=0), axis=1).mean()  # neighbors are near

    def field(p: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.4 * torch.sin(3 * p)).clamp(0, 1)

    values = evaluate_field(field, points, 3, chunk=777)
    np.testing.assert_allclose(values, field(torch.tensor(points, dtype=torch.float32)).numpy(), atol=1e-6)


def test_gaussian_scene_textured_export(tmp_path):
    scene = filled_gaussians("a blue cube", 3000)
    cfg = ExportConfig(resolution=40, threshold=0.5, target_faces=2000, texture_size=128)
    timings: dict[str, float] = {}
    path = export_scene(scene, cfg, tmp_path / "model.glb", "glb", {"scene": "gaussians"}, timings=timings)
    assert set(timings) == {"extraction", "cleanup", "uv", "bake", "write"}
    assert_valid_glb(path)
    mesh = load_mesh(path)
    assert mesh.extents == pytest.approx(np.full(3, 0.8), abs=0.12)  # the cube's half size is 0.4
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255.0
    blue = np.array([0.15, 0.30, 0.90])
    assert np.abs(np.median(image.reshape(-1, 3), axis=0) - blue).max() < 0.03
