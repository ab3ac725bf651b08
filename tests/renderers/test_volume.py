"""The volume renderer against nerfacc's CPU compositing, a per-ray Python loop and closed-form opacities."""

from __future__ import annotations

import math

import nerfacc
import pytest
import torch
from torch import Tensor

from dreamengine.core.background import Background
from dreamengine.core.cameras import Cameras, cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.renderers.volume import (
    NORMAL_MIN_WEIGHT,
    OccupancyGrid,
    VolumeRenderer,
    accumulate,
    composite_weights,
    render_volume,
    shade,
)


@pytest.fixture(autouse=True)
def _private_torch_extensions_dir(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # nerfacc JIT-builds CUDA code on its first CUDA call; keep any build folder out of the home directory.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))


class BlobField:
    """An analytic field: a Gaussian density blob off the origin, albedo varying with position."""

    def __init__(self, radius: float = 1.0, center: tuple[float, float, float] = (0.1, -0.2, 0.15)) -> None:
        self.radius = radius
        self.center = torch.tensor(center)

    def density(self, points: Tensor) -> Tensor:
        return 8.0 * torch.exp(-((points - self.center) ** 2).sum(-1) / (2 * 0.3**2))

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        return self.density(points), (0.5 + 0.4 * points).clamp(0.0, 1.0)

    def normals(self, points: Tensor) -> Tensor:
        return torch.nn.functional.normalize(points - self.center, dim=-1)


class ConstantField:
    """Density ``sigma`` everywhere inside the bounding sphere, white albedo."""

    def __init__(self, sigma: float, radius: float = 1.0) -> None:
        self.sigma = sigma
        self.radius = radius

    def density(self, points: Tensor) -> Tensor:
        return torch.full_like(points[:, 0], self.sigma)

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        return self.density(points), torch.ones_like(points)

    def normals(self, points: Tensor) -> Tensor:
        return torch.nn.functional.normalize(points, dim=-1)


def views(count: int = 2) -> Cameras:
    return cameras_from_spherical(torch.linspace(-5.0, 40.0, count), torch.linspace(0.0, 130.0, count),
                                  torch.full((count,), 2.5), torch.full((count,), 40.0))


def random_samples(num_rays: int, num_samples: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    edges = torch.rand(num_rays, num_samples + 1, generator=generator).mul(4.0).sort(dim=-1).values
    sigmas = torch.rand(num_rays, num_samples, generator=generator) * 5.0
    colors = torch.rand(num_rays, num_samples, 3, generator=generator)
    return edges[:, :-1].contiguous(), edges[:, 1:].contiguous(), sigmas, colors


def test_compositing_matches_nerfacc_values_and_gradients() -> None:
    t_starts, t_ends, sigmas, colors = random_samples(64, 32, seed=0)
    t_mid = 0.5 * (t_starts + t_ends)
    upstream = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))

    def outputs(weights_fn: object, accumulate_fn: object) -> tuple[Tensor, Tensor, Tensor]:
        s = sigmas.clone().requires_grad_(True)
        c = colors.clone().requires_grad_(True)
        weights = weights_fn(s)
        out = torch.cat([accumulate_fn(weights, c), accumulate_fn(weights, None),
                         accumulate_fn(weights, t_mid[..., None])], dim=-1)  # rgb, opacity, depth: [R, 5]
        (out * upstream).sum().backward()
        return out.detach(), s.grad, c.grad

    ours = outputs(lambda s: composite_weights(s, t_ends - t_starts), accumulate)
    reference = outputs(lambda s: nerfacc.render_weight_from_density(t_starts, t_ends, s)[0],
                        lambda w, v: nerfacc.accumulate_along_rays(w, v))
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def brute_force_render(field: BlobField, cameras: Cameras, height: int, width: int, num_samples: int,
                       background: tuple[float, float, float], light_positions: Tensor) -> dict[str, Tensor]:
    """Diffuse-shaded render, one ray and one sample at a time with Python floats, midpoint samples."""
    origins, directions = cameras.rays(height, width)
    rgb = torch.zeros(len(cameras), height, width, 3, dtype=torch.float64)
    opacity = torch.zeros(len(cameras), height, width, 1, dtype=torch.float64)
    depth = torch.zeros_like(opacity)
    orientation_sum, rays_with_content = 0.0, 0
    for b in range(len(cameras)):
        light = light_positions[b].double()
        for y in range(height):
            for x in range(width):
                o, d = origins[b, y, x].double(), directions[b, y, x].double()
                # |o + t d|^2 = r^2  <=>  t^2 + 2 (o.d) t + |o|^2 - r^2 = 0
                half_b, c = float(o @ d), float(o @ o) - field.radius**2
                disc = half_b * half_b - c
                pixel = torch.zeros(3, dtype=torch.float64)
                if disc > 0 and -half_b + math.sqrt(disc) > 0:
                    near, far = max(-half_b - math.sqrt(disc), 0.0), -half_b + math.sqrt(disc)
                    delta = (far - near) / num_samples
                    transmittance = 1.0
                    for i in range(num_samples):
                        t = near + (i + 0.5) * delta
                        point = (o + t * d).float()[None]
                        sigma, albedo = (v[0].double() for v in field.query(point))
                        weight = transmittance * (1.0 - math.exp(-float(sigma) * delta))
                        transmittance *= math.exp(-float(sigma) * delta)
                        normal = field.normals(point)[0].double()
                        if weight <= NORMAL_MIN_WEIGHT:
                            normal = torch.zeros(3, dtype=torch.float64)
                        to_light = torch.nn.functional.normalize(light - point[0].double(), dim=0)
                        color = albedo * (0.5 + 0.5 * max(0.0, float(normal @ to_light)))
                        pixel += weight * color
                        opacity[b, y, x, 0] += weight
                        depth[b, y, x, 0] += weight * t
                        orientation_sum += weight * max(0.0, float(normal @ d)) ** 2
                rays_with_content += int(opacity[b, y, x, 0] > 0)
                behind = torch.tensor(background, dtype=torch.float64)
                rgb[b, y, x] = pixel + (1.0 - opacity[b, y, x, 0]) * behind
    orientation_loss = torch.tensor(orientation_sum / max(rays_with_content, 1), dtype=torch.float64)
    return {"rgb": rgb, "opacity": opacity, "depth": depth, "orientation_loss": orientation_loss}


def test_render_matches_a_per_ray_python_loop() -> None:
    field = BlobField()
    cameras = views(2)
    lights = torch.tensor([[2.0, 0.5, 1.0], [-0.5, 2.0, 0.3]])
    color = (0.3, 0.6, 0.9)
    out = render_volume(field, cameras, 6, 5, background=Background(color=color), num_samples=24,
                        shading="diffuse", light_positions=lights, perturb=False, chunk_rays=7)
    expected = brute_force_render(field, cameras, 6, 5, 24, color, lights)
    for key in ("rgb", "opacity", "depth", "orientation_loss"):
        torch.testing.assert_close(getattr(out, key).double(), expected[key], atol=2e-5, rtol=1e-5)
    assert out.opacity.max() > 0.5  # the blob is actually seen


def test_constant_density_sphere_gives_the_analytic_opacity_per_ray() -> None:
    sigma = 1.7
    cameras = views(2)
    out = render_volume(ConstantField(sigma), cameras, 12, 12, background=Background(), num_samples=16,
                        perturb=True, generator=torch.Generator().manual_seed(0))
    origins, directions = cameras.rays(12, 12)
    # Distance from the center to each ray's line; chord length 2 sqrt(r^2 - p^2) where it crosses.
    perpendicular = torch.linalg.cross(origins, directions).norm(dim=-1, keepdim=True)
    chord = 2.0 * (1.0 - perpendicular**2).clamp(min=0.0).sqrt()
    torch.testing.assert_close(out.opacity, 1.0 - torch.exp(-sigma * chord), atol=1e-5, rtol=0)
    assert (chord > 0).any() and (chord == 0).any()


def test_rays_that_miss_the_bound_show_the_background() -> None:
    field = BlobField(radius=0.5, center=(0.0, 0.0, 0.0))
    cameras = views(1)
    color = (0.2, 0.4, 0.6)
    out = render_volume(field, cameras, 16, 16, background=Background(color=color), num_samples=16,
                        perturb=False, compute_normals=True)
    origins, directions = cameras.rays(16, 16)
    miss = torch.linalg.cross(origins, directions).norm(dim=-1) >= 0.5  # [1, 16, 16]
    assert 0 < miss.sum() < miss.numel()
    assert (out.opacity[miss] == 0).all() and (out.depth[miss] == 0).all() and (out.normal[miss] == 0).all()
    torch.testing.assert_close(out.rgb[miss], torch.tensor(color).expand(int(miss.sum()), 3))
    assert (out.opacity[~miss] > 0).all()


def test_chunking_and_the_jitter_generator_do_not_change_the_result() -> None:
    field, cameras = BlobField(), views(2)
    renders = [render_volume(field, cameras, 8, 8, background=Background(), num_samples=12, chunk_rays=chunk,
                             generator=torch.Generator().manual_seed(3)) for chunk in (5, 1000)]
    torch.testing.assert_close(renders[0].rgb, renders[1].rgb)
    midpoints = render_volume(field, cameras, 8, 8, background=Background(), num_samples=12, perturb=False)
    assert not torch.equal(midpoints.rgb, renders[0].rgb)


def test_gradients_flow_from_the_image_to_the_scene_and_background() -> None:
    from dreamengine.config.scenes import NeRFConfig
    from dreamengine.scenes.nerf import NeRFScene

    torch.manual_seed(0)
    scene = NeRFScene(NeRFConfig(num_levels=4, log2_hashmap_size=12, base_resolution=8, hidden_dim=16,
                                 encoding_backend="torch"))
    background = Background(mode="mlp")
    out = render_volume(scene, views(1), 8, 8, background=background, num_samples=8, shading="textureless",
                        light_positions=torch.tensor([[1.0, 1.0, 1.0]]))
    (out.rgb.mean() + out.orientation_loss).backward()
    for module in (scene.encoding, scene.network, background):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_shading_modes_follow_the_point_light_formulas() -> None:
    albedo = torch.tensor([[0.2, 0.4, 0.8], [0.2, 0.4, 0.8]])
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    points = torch.zeros(2, 3)
    lights = torch.tensor([[0.0, 3.0, 3.0], [0.0, 3.0, 3.0]])  # 45 degrees from +Z
    lambert = torch.tensor([[math.cos(math.pi / 4)], [0.0]])
    torch.testing.assert_close(shade(albedo, normals, points, lights, "diffuse"),
                               albedo * (0.5 + 0.5 * lambert))
    torch.testing.assert_close(shade(albedo, normals, points, lights, "textureless"),
                               (0.5 + 0.5 * lambert).expand(2, 3))
    torch.testing.assert_close(shade(albedo, None, points, None, "albedo"), albedo)


def test_bad_render_arguments_raise_config_errors() -> None:
    field, cameras, background = BlobField(), views(1), Background()
    with pytest.raises(ConfigError, match="shading"):
        render_volume(field, cameras, 4, 4, background=background, shading="phong")
    with pytest.raises(ConfigError, match="light_positions"):
        render_volume(field, cameras, 4, 4, background=background, shading="diffuse")
    with pytest.raises(ConfigError, match="backend"):
        render_volume(field, cameras, 4, 4, background=background, backend="optix")


class BallField(ConstantField):
    """Density ``sigma`` inside the ball of radius ``ball`` (< the bound), 0 outside."""

    def __init__(self, sigma: float, ball: float) -> None:
        super().__init__(sigma)
        self.ball = ball

    def density(self, points: Tensor) -> Tensor:
        return torch.where(points.norm(dim=-1) < self.ball, self.sigma, 0.0)


def test_torch_occupancy_grid_marks_the_cells_a_ball_touches() -> None:
    torch.manual_seed(0)
    grid = OccupancyGrid(num_samples=32, resolution=16, update_every=4, backend="torch")
    assert grid.occupied.all()  # nothing is skipped before the first update
    grid.update(BallField(5.0, ball=0.5), step=3)  # not a multiple of update_every: no change
    assert grid.occupied.all()
    grid.update(BallField(5.0, ball=0.5), step=4)
    axis = (torch.arange(16) + 0.5) / 16 * 2 - 1
    centers = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    half_diagonal = math.sqrt(3) / 16
    distance = centers.norm(dim=-1)
    assert grid.occupied[distance < 0.5 - half_diagonal].all()
    assert not grid.occupied[distance > 0.5 + half_diagonal].any()
    torch.testing.assert_close(grid.occupied_at(centers), grid.occupied)


def test_a_grid_no_update_has_seen_is_refreshed_once_after_training() -> None:
    # a run shorter than update_every steps never refreshed its grid: every cell stays occupied and the renders
    # after training would evaluate every sample; after_training refreshes it once, with fixed random numbers
    from dreamengine.config.run import RenderConfig

    cfg = RenderConfig(num_samples=32, occupancy_resolution=16, occupancy_update_every=16, backend="torch")
    renderer = VolumeRenderer(cfg, 1.0, torch.device("cpu"))
    grid = renderer.occupancy
    ball = BallField(5.0, ball=0.5)
    renderer.after_step(ball, 10)  # step 10 of a 10-step run: no update due
    assert grid is not None and not grid.refreshed and grid.occupied.all()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    renderer.after_training(ball)
    assert torch.equal(torch.get_rng_state(), state)  # the run's own random stream is untouched
    assert grid.refreshed and 0.0 < grid.occupied.float().mean() < 0.2
    expected = OccupancyGrid(num_samples=32, resolution=16, backend="torch")
    torch.manual_seed(0)
    expected.update(ball, step=0)
    assert torch.equal(grid.values, expected.values) and torch.equal(grid.occupied, expected.occupied)

    values = grid.values.clone()
    renderer.after_training(BallField(5.0, ball=0.9))  # a grid updates have seen is left as it is
    assert torch.equal(grid.values, values)


def test_nerfacc_estimator_is_refreshed_at_the_first_update_through_its_inference_update() -> None:
    # the CUDA backend's grid is nerfacc's OccGridEstimator, whose fresh grid marks nothing occupied; its update
    # runs on the CPU too, so the refresh's nerfacc branch is checked here against the ball's cells
    grid = OccupancyGrid(num_samples=32, resolution=16, backend="torch")
    grid.estimator = nerfacc.OccGridEstimator(roi_aabb=torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]),
                                              resolution=16, levels=1)
    assert not grid.refreshed
    grid.update(BallField(5.0, ball=0.5), step=1)  # not due, but a grid nerfacc never updated renders nothing
    assert grid.refreshed
    axis = (torch.arange(16) + 0.5) / 16 * 2 - 1
    distance = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).norm(dim=-1)
    half_diagonal = math.sqrt(3) / 16
    occupied = grid.estimator.binaries[0]  # [16, 16, 16], x-major like the meshgrid above
    assert occupied[distance < 0.5 - half_diagonal].all()
    assert not occupied[distance > 0.5 + half_diagonal].any()


def test_render_with_the_torch_grid_equals_the_field_masked_to_occupied_cells() -> None:
    torch.manual_seed(0)
    field = BlobField()
    grid = OccupancyGrid(num_samples=16, resolution=16, backend="torch")
    grid.update(field, step=0)
    assert 0 < grid.occupied.float().mean() < 0.5

    class MaskedBlob(BlobField):
        def density(self, points: Tensor) -> Tensor:
            return super().density(points) * grid.occupied_at(points)

    cameras = views(2)
    with_grid = render_volume(field, cameras, 10, 10, background=Background(), num_samples=16, perturb=False,
                              occupancy=grid, compute_normals=True)
    masked = render_volume(MaskedBlob(), cameras, 10, 10, background=Background(), num_samples=16,
                           perturb=False, compute_normals=True)
    for key in ("rgb", "opacity", "depth", "normal", "orientation_loss"):
        torch.testing.assert_close(getattr(with_grid, key), getattr(masked, key))
    unmasked = render_volume(field, cameras, 10, 10, background=Background(), num_samples=16, perturb=False)
    assert not torch.allclose(unmasked.opacity, with_grid.opacity)  # the grid did skip samples with density


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour of the CUDA backend choice")
def test_cuda_backend_on_cpu_is_refused_and_the_occupancy_grid_is_a_no_op() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        render_volume(BlobField(), views(1), 4, 4, background=Background(), backend="cuda")
    grid = OccupancyGrid(backend="auto")
    assert grid.backend == "torch" and grid.estimator is None
    grid.update(BlobField(), step=0)  # must not touch nerfacc's CUDA code


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nerfacc_path_renders_the_analytic_opacity_on_cuda() -> None:
    sigma = 1.7
    field = ConstantField(sigma)
    cameras = views(2).to("cuda")
    grid = OccupancyGrid(num_samples=256, backend="cuda", device="cuda")
    for step in range(3):
        grid.update(field, step)
    out = render_volume(field, cameras, 12, 12, background=Background().cuda(), num_samples=256,
                        backend="cuda", occupancy=grid, perturb=False)
    origins, directions = cameras.rays(12, 12)
    perpendicular = torch.linalg.cross(origins, directions).norm(dim=-1, keepdim=True)
    chord = 2.0 * (1.0 - perpendicular**2).clamp(min=0.0).sqrt()
    # nerfacc marches fixed steps from t_min, so the last partial step may be dropped: one step of slack.
    torch.testing.assert_close(out.opacity, 1.0 - torch.exp(-sigma * chord),
                               atol=sigma * grid.render_step_size, rtol=0)
