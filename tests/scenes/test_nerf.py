"""The NeRF scene: initial density blob, shared query, finite-difference normals, parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dreamengine.config import OptimConfig
from dreamengine.config.scenes import NeRFConfig
from dreamengine.core.background import Background, sample_light_positions
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.scenes.nerf import NeRFScene, trunc_exp


def small_config(**overrides: object) -> NeRFConfig:
    settings = {"num_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "per_level_scale": 1.5,
                "hidden_dim": 16, "encoding_backend": "torch"}
    settings.update(overrides)
    return NeRFConfig(**settings)


def unit_directions(count: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)


def test_magic3d_blob_makes_the_center_dense_and_the_boundary_empty_at_init() -> None:
    torch.manual_seed(0)
    scene = NeRFScene(small_config())
    center = torch.zeros(1, 3)
    boundary = unit_directions(64, 0) * scene.radius
    # Bias: 10 * (1 - |x| / 0.5) is 10 at the center, 0 at |x| = 0.5 and -10 on the unit sphere; the
    # untrained MLP adds a raw value well inside (-1, 1).
    assert scene.density(center).item() > math.log1p(math.exp(9.0))
    assert scene.density(boundary).max().item() < math.log1p(math.exp(-9.0))
    halfway = unit_directions(64, 1) * 0.5
    torch.testing.assert_close(scene.density_bias(halfway), torch.zeros(64), atol=1e-5, rtol=0)


def test_dreamfusion_blob_and_trunc_exp_follow_their_formulas() -> None:
    torch.manual_seed(0)
    config = small_config(density_bias="blob_dreamfusion", density_blob_scale=5.0, density_blob_std=0.2,
                          density_activation="trunc_exp")
    scene = NeRFScene(config)
    points = unit_directions(16, 2) * torch.rand(16, 1, generator=torch.Generator().manual_seed(3))
    expected_bias = 5.0 * torch.exp(-(points**2).sum(-1) / (2 * 0.2**2))
    torch.testing.assert_close(scene.density_bias(points), expected_bias)
    raw = scene.network(scene.encoding(scene.normalize(points)))[:, 0]
    torch.testing.assert_close(scene.density(points), torch.exp(raw + expected_bias))

    x = torch.tensor([0.0, 20.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, math.exp(15.0)]))


def test_query_shares_one_pass_and_agrees_with_density_and_albedo() -> None:
    torch.manual_seed(0)
    scene = NeRFScene(small_config())
    points = torch.rand(50, 3) * 2 - 1
    density, albedo = scene.query(points)
    torch.testing.assert_close(density, scene.density(points))
    torch.testing.assert_close(albedo, scene.albedo(points))
    assert density.shape == (50,) and albedo.shape == (50, 3)
    assert (density >= 0).all() and (albedo > 0).all() and (albedo < 1).all()


class AnalyticSphereScene(NeRFScene):
    """Density falling off smoothly through a sphere of radius 0.5: the outward normal is x / |x|."""

    def density(self, points: Tensor) -> Tensor:
        return torch.nn.functional.softplus(20.0 * (0.5 - points.norm(dim=-1)))


def test_finite_difference_normals_of_an_analytic_sphere_point_outward() -> None:
    scene = AnalyticSphereScene(small_config())
    radii = 0.2 + 0.6 * torch.rand(200, 1, generator=torch.Generator().manual_seed(5))
    points = unit_directions(200, 4) * radii
    normals = scene.normals(points)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(200))
    outward = torch.nn.functional.normalize(points, dim=-1)
    # Central differences with step 0.01 are accurate to O(eps^2): well under a degree here.
    assert (normals * outward).sum(-1).min() > math.cos(math.radians(0.5))


def test_param_groups_cover_every_trainable_parameter_exactly_once() -> None:
    scene = NeRFScene(small_config())
    background = Background(mode="mlp")
    optim = OptimConfig(lr_encoding=1e-2, lr_network=1e-3, lr_background=1e-4)
    groups = scene.param_groups(optim, background=background)
    assert [g["name"] for g in groups] == ["encoding", "network", "background"]
    assert [g["lr"] for g in groups] == [1e-2, 1e-3, 1e-4]
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for module in (scene, background) for p in module.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)
    torch.optim.Adam(groups)  # accepted as-is
    # A solid background has nothing to train, so it adds no group.
    solid = scene.param_groups(OptimConfig(lr_encoding=1.0, lr_network=1.0, lr_background=1.0), background=Background())
    assert [g["name"] for g in solid] == ["encoding", "network"]


def test_backgrounds_start_at_their_color_and_only_the_mlp_trains() -> None:
    directions = unit_directions(10, 6).view(2, 5, 3)
    solid = Background(mode="solid", color=(0.2, 0.4, 0.6))
    torch.testing.assert_close(solid(directions), torch.tensor([0.2, 0.4, 0.6]).expand(2, 5, 3))
    assert not list(solid.parameters())
    mlp = Background(mode="mlp", color=(1.0, 0.5, 0.0))
    torch.testing.assert_close(mlp(directions), torch.tensor([0.98, 0.5, 0.02]).expand(2, 5, 3), atol=1e-3,
                               rtol=0)
    mlp(directions).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())


def test_bad_scene_and_background_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="density_bias"):
        NeRFScene(small_config(density_bias="blob"))
    with pytest.raises(ConfigError, match="density_activation"):
        NeRFScene(small_config(density_activation="relu"))
    with pytest.raises(ConfigError, match="radius"):
        NeRFScene(small_config(radius=0.0))
    with pytest.raises(ConfigError, match="background mode"):
        Background(mode="random")
    with pytest.raises(ConfigError, match="color"):
        Background(color=(255.0, 255.0, 255.0))


def test_light_positions_sit_in_the_distance_range_on_the_camera_side() -> None:
    cameras = cameras_from_spherical(torch.zeros(64), torch.linspace(-180.0, 180.0, 64),
                                     torch.full((64,), 2.5), torch.full((64,), 40.0))
    lights = sample_light_positions(cameras, torch.Generator().manual_seed(0), distance_range=(0.8, 1.5))
    distance = lights.norm(dim=-1)
    assert lights.shape == (64, 3) and distance.min() >= 0.8 and distance.max() <= 1.5
    # The noise (std 1) is smaller than the camera distance (2.5): lights mostly share the camera's side.
    assert (torch.nn.functional.cosine_similarity(lights, cameras.position) > 0).float().mean() > 0.8
    exact = sample_light_positions(cameras, torch.Generator().manual_seed(0), (1.0, 1.0), direction_noise=0.0)
    torch.testing.assert_close(exact, cameras.position / 2.5)


def test_blob_fade_removes_the_dense_ball_but_keeps_the_empty_boundary_and_resumes() -> None:
    points = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.0, 0.9]])
    kept = NeRFScene(NeRFConfig(density_blob_fade_steps=0))
    fading = NeRFScene(NeRFConfig(density_blob_fade_steps=100))
    blob = torch.tensor([10.0, 5.0, 10.0 * (1 - 0.9 / 0.5)])
    torch.testing.assert_close(fading.density_bias(points), blob)  # step 0: the whole blob
    optimizer = torch.optim.Adam(fading.param_groups(OptimConfig()))
    fading.update_schedules(optimizer, 50)
    torch.testing.assert_close(fading.density_bias(points), torch.tensor([5.0, 2.5, blob[2]]))
    fading.update_schedules(optimizer, 150)
    torch.testing.assert_close(fading.density_bias(points), torch.tensor([0.0, 0.0, blob[2]]))  # boundary stays
    kept.update_schedules(optimizer, 150)
    torch.testing.assert_close(kept.density_bias(points), blob)  # fade_steps 0: today's blob, always
    # the weight is saved with the scene; a checkpoint from before it existed loads with weight 1
    restored = NeRFScene(NeRFConfig(density_blob_fade_steps=100))
    restored.load_state_dict(fading.state_dict())
    torch.testing.assert_close(restored.density_bias(points), fading.density_bias(points))
    old_state = {k: v for k, v in fading.state_dict().items() if k != "blob_weight"}
    restored.load_state_dict(old_state)
    assert float(restored.blob_weight) == 1.0
