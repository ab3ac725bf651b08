"""Gaussian scenes (init, learning rates, export fields, checkpoints) and densification."""

from __future__ import annotations

import io
import math

import pytest
import torch

from dreamengine.config import OptimConfig
from dreamengine.config.scenes import DensifyConfig, GaussiansConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.export import extract_mesh
from dreamengine.renderers.splat import covariance_and_precision, render_splats
from dreamengine.scenes.densify import DensifyStrategy
from dreamengine.scenes.gaussians import PARAM_NAMES, GaussianScene, sh_dc_to_rgb


def random_scene(n: int = 64, seed: int = 0, **overrides: object) -> GaussianScene:
    scene = GaussianScene(GaussiansConfig(num_points=n, seed=seed, **overrides))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        scene.quats.copy_(torch.randn(n, 4, generator=gen))
        scene.log_scales.copy_(math.log(0.05) + 0.5 * torch.randn(n, 3, generator=gen))
        scene.logit_opacities.copy_(torch.randn(n, generator=gen))
    return scene


def adam_for(scene: GaussianScene) -> torch.optim.Adam:
    return torch.optim.Adam(scene.param_groups(), eps=1e-15)


def adam_step(scene: GaussianScene, optimizer: torch.optim.Adam, seed: int) -> None:
    """One Adam step on a random quadratic of every parameter."""
    gen = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    loss = sum((param * torch.randn(param.shape, generator=gen)).sum() + param.square().sum()
               for param in scene.parameters_by_name().values())
    loss.backward()
    optimizer.step()


# ---- scene -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sphere_init_shapes(degree: int) -> None:
    scene = GaussianScene(GaussiansConfig(num_points=500, sh_degree=degree, init_radius=0.4, init_opacity=0.2))
    assert scene.num_gaussians == 500 and scene.radius == 1.0
    distance = scene.means.detach().norm(dim=-1)
    assert float(distance.max()) <= 0.4 + 1e-6
    assert float(distance.median()) > 0.4 * 0.7  # uniform in volume: median r = 0.79 R
    assert scene.sh_coeffs.shape == (500, (degree + 1) ** 2, 3)
    assert torch.allclose(scene.opacities, torch.full((500,), 0.2))
    assert torch.allclose(scene.scales, torch.full((500, 3), 0.02))
    rgb = sh_dc_to_rgb(scene.sh_dc[:, 0])
    rgb = rgb.detach()
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1 and float(rgb.std()) > 0.1


def test_albedo_only_drops_higher_orders() -> None:
    scene = GaussianScene(GaussiansConfig(num_points=10, sh_degree=3, albedo_only=True))
    assert scene.sh_degree == 0 and scene.sh_rest.shape == (10, 0, 3)


@pytest.mark.parametrize("overrides,match", [({"sh_degree": 4}, "sh_degree"), ({"init": "mesh"}, "init"),
                                             ({"init": "ply"}, "init_path"), ({"init_opacity": 1.0}, "opacity"),
                                             ({"init_scale": 0.0}, "init_scale")])
def test_bad_config(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GaussianScene(GaussiansConfig(**overrides))


def test_param_groups_and_means_schedule() -> None:
    cfg = GaussiansConfig(num_points=8, lr_means_init=1e-3, lr_means_final=1e-5, lr_means_decay_steps=100)
    scene = GaussianScene(cfg)
    background = Background(mode="mlp")
    groups = scene.param_groups(OptimConfig(lr_background=0.01), background=background)
    assert [g["name"] for g in groups] == list(PARAM_NAMES) + ["background"]
    params = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params) == len(list(scene.parameters())) + len(
        list(background.parameters()))
    optimizer = torch.optim.Adam(groups)
    assert scene.update_schedules(optimizer, 0) == pytest.approx(1e-3)
    assert scene.update_schedules(optimizer, 50) == pytest.approx(1e-4)  # geometric midpoint
    assert scene.update_schedules(optimizer, 500) == pytest.approx(1e-5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert optimizer.param_groups[1]["lr"] == cfg.lr_scales


def test_density_is_truncated_gaussian_sum() -> None:
    scene = random_scene(40)
    gen = torch.Generator().manual_seed(5)
    points = torch.cat([scene.means.detach()[:10] + 0.03 * torch.randn(10, 3, generator=gen),
                        torch.rand(300, 3, generator=gen) - 0.5])
    _, precision = covariance_and_precision(scene.quats.detach(), scene.scales.detach())
    diff = points[:, None, :] - scene.means.detach()[None]
    maha = torch.einsum("mki,kij,mkj->mk", diff, precision, diff)
    inside = (diff.abs() <= 3 * scene.scales.detach().amax(-1)[None, :, None]).all(-1)
    expected = (scene.opacities.detach() * torch.exp(-0.5 * maha) * inside).sum(-1)
    for chunk in (7, 4096):
        assert torch.allclose(scene.density(points, chunk=chunk), expected, atol=1e-6)
    assert float(expected[:10].min()) > 0.01  # the test points do meet Gaussians


def test_albedo_follows_gaussians() -> None:
    scene = random_scene(2)
    with torch.no_grad():
        scene.means.copy_(torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]))
        scene.sh_dc.copy_(torch.tensor([[[1.0, -1.0, 0.0]], [[-1.0, 1.0, 0.5]]]))
    colors = sh_dc_to_rgb(scene.sh_dc.detach()[:, 0])
    points = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [-0.9, 0.9, 0.9], [0.9, -0.9, 0.0]])
    assert torch.allclose(scene.albedo(points), colors[[0, 1, 0, 1]], atol=1e-6)


def test_mesh_extraction_from_gaussians() -> None:
    scene = GaussianScene(GaussiansConfig(num_points=3000, init_radius=0.5, init_scale=0.04, init_opacity=0.9))
    mesh = extract_mesh(scene.density, radius=1.0, resolution=40, threshold=0.5)
    radii = torch.from_numpy(mesh.vertices).norm(dim=-1)
    assert len(mesh.faces) > 100
    assert 0.4 < float(radii.median()) < 0.65  # the surface of the ball of points


def test_load_state_dict_resizes() -> None:
    source = random_scene(30, sh_degree=1)
    target = random_scene(7, seed=3, sh_degree=1)
    target.load_state_dict(source.state_dict())
    for name, param in target.parameters_by_name().items():
        assert torch.equal(param, source.parameters_by_name()[name]), name


# ---- densification -----------------------------------------------------------------------------------
def set_grads(strategy: DensifyStrategy, scene: GaussianScene, high: list[int]) -> None:
    strategy.grad2d_sum = torch.zeros(scene.num_gaussians)
    strategy.grad2d_sum[high] = 1.0
    strategy.count = torch.ones(scene.num_gaussians)


def moments(scene: GaussianScene, optimizer: torch.optim.Adam) -> dict[str, torch.Tensor]:
    return {name: optimizer.state[param]["exp_avg"].clone() for name, param in scene.parameters_by_name().items()}


def test_clone_small_gaussians() -> None:
    scene = random_scene(20)
    with torch.no_grad():
        scene.log_scales.fill_(math.log(0.005))  # all small: clones
    optimizer = adam_for(scene)
    adam_step(scene, optimizer, 0)
    before = {name: p.detach().clone() for name, p in scene.parameters_by_name().items()}
    before_moments = moments(scene, optimizer)
    strategy = DensifyStrategy(DensifyConfig(grow_grad2d=0.5))
    set_grads(strategy, scene, [3, 11])
    assert strategy.grow(scene, optimizer) == (2, 0)
    assert scene.num_gaussians == 22
    after_moments = moments(scene, optimizer)
    for name, param in scene.parameters_by_name().items():
        assert torch.equal(param[:20], before[name]) and torch.equal(param[20:], before[name][[3, 11]])
        assert torch.equal(after_moments[name][:20], before_moments[name])
        assert not bool(after_moments[name][20:].any())  # new rows start with zero moments
        assert optimizer.state[param]["exp_avg_sq"].shape == param.shape
    adam_step(scene, optimizer, 1)  # the optimizer still works


def test_split_large_gaussians() -> None:
    scene = random_scene(20)
    with torch.no_grad():
        scene.log_scales.fill_(math.log(0.1))  # all large: splits
    optimizer = adam_for(scene)
    adam_step(scene, optimizer, 0)
    before = {name: p.detach().clone() for name, p in scene.parameters_by_name().items()}
    before_moments = moments(scene, optimizer)
    strategy = DensifyStrategy(DensifyConfig(grow_grad2d=0.5))
    set_grads(strategy, scene, [0, 5, 6])
    assert strategy.grow(scene, optimizer) == (0, 3)
    assert scene.num_gaussians == 23
    keep = [i for i in range(20) if i not in (0, 5, 6)]
    after_moments = moments(scene, optimizer)
    for name, param in scene.parameters_by_name().items():
        assert torch.equal(param[:17], before[name][keep])
        assert torch.equal(after_moments[name][:17], before_moments[name][keep])
        assert not bool(after_moments[name][17:].any())
    parents = [0, 5, 6, 0, 5, 6]
    assert torch.allclose(scene.log_scales[17:], before["scales"][parents] - math.log(1.6))
    assert torch.equal(scene.quats[17:], before["quats"][parents])
    offsets = scene.means.detach()[17:] - before["means"][parents]
    assert 0.0 < float(offsets.norm(dim=-1).max()) < 0.1 * 4 * math.sqrt(3)  # within a few parent sigmas
    assert strategy.count is not None and strategy.count.shape == (23,)
    adam_step(scene, optimizer, 1)


def test_prune_and_cap() -> None:
    scene = random_scene(20)
    with torch.no_grad():
        scene.logit_opacities.fill_(2.0)
        scene.log_scales.fill_(math.log(0.03))
        scene.logit_opacities[[2, 9]] = -10.0  # transparent
        scene.log_scales[4] = math.log(0.5)  # too large
    optimizer = adam_for(scene)
    adam_step(scene, optimizer, 0)
    before_means = scene.means.detach().clone()
    before_moments = moments(scene, optimizer)
    strategy = DensifyStrategy(DensifyConfig(prune_opacity=0.01, prune_scale3d=0.1))
    assert strategy.prune(scene, optimizer, prune_large=False) == 2
    keep = [i for i in range(20) if i not in (2, 9)]
    assert torch.equal(scene.means, before_means[keep])
    assert torch.equal(moments(scene, optimizer)["means"], before_moments["means"][keep])
    assert strategy.prune(scene, optimizer, prune_large=True) == 1 and scene.num_gaussians == 17
    adam_step(scene, optimizer, 1)
    capped = DensifyStrategy(DensifyConfig(grow_grad2d=0.5, max_gaussians=19))
    set_grads(capped, scene, list(range(10)))
    capped.grad2d_sum[7] = 5.0  # the highest gradient wins the two free slots
    capped.grad2d_sum[1] = 3.0
    cloned, split = capped.grow(scene, optimizer)
    assert cloned + split == 2 and scene.num_gaussians == 19


def test_opacity_reset() -> None:
    scene = random_scene(10)
    optimizer = adam_for(scene)
    adam_step(scene, optimizer, 0)
    strategy = DensifyStrategy(DensifyConfig(prune_opacity=0.01))
    old = scene.opacities.detach().clone()
    strategy.reset_opacities(scene, optimizer)
    assert torch.allclose(scene.opacities, old.clamp(max=0.02), atol=1e-6)
    assert not bool(optimizer.state[scene.logit_opacities]["exp_avg"].any())


def test_training_loop_densifies_and_checkpoints() -> None:
    """Render -> backward -> step -> strategy, as the trainer will, with a refinement at step 2."""
    scene = GaussianScene(GaussiansConfig(num_points=300, init_scale=0.03, init_opacity=0.3, sh_degree=1))
    optimizer = adam_for(scene)
    strategy = DensifyStrategy(DensifyConfig(refine_start=2, refine_every=2, reset_every=0, grow_grad2d=1e-6,
                                             grow_scale3d=0.05, prune_opacity=0.29))
    cams = cameras_from_spherical(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 120.0]), torch.tensor([2.5, 2.5]),
                                  torch.tensor([40.0, 40.0]))
    sizes = []
    for step in range(1, 4):
        out = render_splats(scene.render_inputs(), cams, 16, 16, background=Background(), backend="torch")
        optimizer.zero_grad()
        (out.rgb - torch.tensor([1.0, 0.0, 0.0])).square().mean().backward()
        optimizer.step()
        strategy.step_post_backward(scene, optimizer, out.info, step)
        sizes.append(scene.num_gaussians)
    assert sizes[0] == 300 and sizes[1] != 300  # refined at step 2
    for param in scene.parameters_by_name().values():
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    # a checkpoint of the resized scene and its optimizer loads into a fresh run
    fresh = GaussianScene(GaussiansConfig(num_points=300, init_scale=0.03, init_opacity=0.3, sh_degree=1))
    fresh_optimizer = adam_for(fresh)
    buffer = io.BytesIO()
    torch.save({"scene": scene.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    fresh.load_state_dict(checkpoint["scene"])
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])
    adam_step(scene, optimizer, 9)
    adam_step(fresh, fresh_optimizer, 9)
    for name, param in fresh.parameters_by_name().items():
        assert torch.equal(param, scene.parameters_by_name()[name]), name
