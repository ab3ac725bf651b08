"""The torch Gaussian rasterizer against gsplat's pure-torch references and a brute-force compositor."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

from dreamengine.config.scenes import GaussiansConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.renderers.splat import (
    MAX_ALPHA,
    MIN_ALPHA,
    MIN_TRANSMITTANCE,
    composite_pairs,
    covariance_and_precision,
    eval_sh,
    intrinsics,
    opencv_viewmats,
    project_gaussians,
    render_splats,
)
from dreamengine.scenes.gaussians import GaussianScene

os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="torch_ext_"))
torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")


def random_gaussians(n: int, seed: int, spread: float = 0.6) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.exp(torch.rand(n, 3, generator=gen) * 2.0 - 4.5)  # 0.011 .. 0.08
    return means.double(), quats.double(), scales.double()


def test_opencv_viewmat_maps_camera_frame() -> None:
    cams = cameras_from_spherical(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    view = opencv_viewmats(cams.c2w)[0]
    c2w = cams.c2w[0]
    # the origin is straight ahead (+Z) at the camera distance
    assert torch.allclose(view @ torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 2.5, 1.0]),
                          atol=1e-5)
    # the camera's OpenGL up (+Y) is OpenCV -Y; its right (+X) stays +X
    up_point = torch.cat([c2w[:3, 3] + c2w[:3, 1], torch.ones(1)])
    right_point = torch.cat([c2w[:3, 3] + c2w[:3, 0], torch.ones(1)])
    assert torch.allclose((view @ up_point)[:3], torch.tensor([0.0, -1.0, 0.0]), atol=1e-5)
    assert torch.allclose((view @ right_point)[:3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)


def test_projected_center_matches_camera_rays() -> None:
    """A point on the ray through pixel (row i, col j) projects to that pixel's center (j + 0.5, i + 0.5)."""
    cams = cameras_from_spherical(torch.tensor([35.0]), torch.tensor([-60.0]), torch.tensor([2.2]),
                                  torch.tensor([45.0]))
    height, width = 24, 32
    origins, directions = cams.rays(height, width)
    points = (origins + 1.7 * directions)[0].reshape(-1, 3)
    covars = torch.eye(3).expand(len(points), 3, 3) * 1e-4
    proj = project_gaussians(points, covars, opencv_viewmats(cams.c2w)[0], intrinsics(cams, height, width)[0],
                             width, height)
    rows, cols = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    assert torch.allclose(proj.means2d, torch.stack([cols, rows], -1).reshape(-1, 2), atol=1e-3)


def test_covariance_matches_gsplat() -> None:
    _, quats, scales = random_gaussians(64, seed=0)
    covars, precis = covariance_and_precision(quats, scales)
    ref_covars, ref_precis = torch_impl._quat_scale_to_covar_preci(quats, scales)
    assert torch.allclose(covars, ref_covars, rtol=1e-10, atol=1e-14)
    assert torch.allclose(precis, ref_precis, rtol=1e-8)


@pytest.mark.parametrize("elevation,azimuth", [(15.0, 0.0), (50.0, 140.0), (-10.0, -100.0)])
def test_projection_matches_gsplat(elevation: float, azimuth: float) -> None:
    means, quats, scales = random_gaussians(200, seed=1, spread=1.4)  # some fall outside the image
    means[:5] = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64) * torch.tensor([math.cos(math.radians(
        azimuth)), math.sin(math.radians(azimuth)), 0.8], dtype=torch.float64)  # near / behind the camera
    cams = cameras_from_spherical(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    height, width = 48, 64
    viewmat = opencv_viewmats(cams.c2w.double())
    K = intrinsics(cams, height, width).double()
    covars, _ = covariance_and_precision(quats, scales)
    proj = project_gaussians(means, covars, viewmat[0], K[0], width, height)
    radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(means, covars, viewmat, K, width,
                                                                          height, eps2d=0.3)
    ref_radii = radii[0].to(torch.float64)
    assert torch.equal(proj.radii, ref_radii)
    assert torch.equal(proj.visible, (ref_radii > 0).all(-1))
    assert bool((~proj.visible).any()) and bool(proj.visible.any())  # both cases are exercised
    vis = proj.visible
    assert torch.allclose(proj.means2d[vis], means2d[0][vis], rtol=1e-10)
    assert torch.allclose(proj.depths[vis], depths[0][vis], rtol=1e-10)
    assert torch.allclose(proj.conics[vis], conics[0][vis], rtol=1e-8)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree: int) -> None:
    gen = torch.Generator().manual_seed(degree)
    dirs = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    coeffs = torch.randn(100, 16, 3, generator=gen, dtype=torch.float64)
    ours = eval_sh(degree, dirs, coeffs)
    ref = torch_impl._spherical_harmonics(degree, dirs, coeffs)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def brute_force_composite(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                          features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel at a time, one Gaussian at a time (front to back), with gsplat's rules."""
    image_rows, alpha_rows = [], []
    for row in range(height):
        image_row, alpha_row = [], []
        for col in range(width):
            pixel = torch.tensor([col + 0.5, row + 0.5], dtype=means2d.dtype)
            transmittance = torch.ones((), dtype=means2d.dtype)
            color = torch.zeros(features.shape[1], dtype=means2d.dtype)
            for i in range(len(means2d)):
                dx, dy = pixel - means2d[i]
                a, b, c = conics[i]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=MAX_ALPHA)
                if sigma < 0 or alpha < MIN_ALPHA:
                    continue
                next_t = transmittance * (1 - alpha)
                if next_t <= MIN_TRANSMITTANCE:
                    break
                color = color + transmittance * alpha * features[i]
                transmittance = next_t
            image_row.append(color)
            alpha_row.append(1 - transmittance)
        image_rows.append(torch.stack(image_row))
        alpha_rows.append(torch.stack(alpha_row))
    return torch.stack(image_rows), torch.stack(alpha_rows)[..., None]


def small_screen_scene(seed: int, n: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    means2d = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height]) * 1.2 - 1.0
    std = 0.8 + 3.0 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    corr = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 1.2
    cov = torch.stack([std[:, 0] ** 2, corr * std[:, 0] * std[:, 1], std[:, 1] ** 2], -1)
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conics = torch.stack([cov[:, 2] / det, -cov[:, 1] / det, cov[:, 0] / det], -1)
    radii = torch.ceil(3.33 * torch.stack([cov[:, 0], cov[:, 2]], -1).sqrt())
    opacities = 0.2 + 0.79 * torch.rand(n, generator=gen, dtype=torch.float64)
    opacities[0] = 1.0  # hits the 0.999 cap
    features = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    return means2d, conics, opacities, features, radii


@pytest.mark.parametrize("seed,count", [(3, 30), (4, 60)])
def test_pair_compositor_matches_brute_force(seed: int, count: int) -> None:
    height, width = 12, 16
    means2d, conics, opacities, features, radii = small_screen_scene(seed, count, height, width)
    leaves = [t.clone().requires_grad_(True) for t in (means2d, conics, opacities, features)]
    image, alpha = composite_pairs(*leaves, radii, height, width)
    ref_leaves = [t.clone().requires_grad_(True) for t in (means2d, conics, opacities, features)]
    ref_image, ref_alpha = brute_force_composite(*ref_leaves, height, width)
    assert image.shape == (height, width, 4) and alpha.shape == (height, width, 1)
    assert torch.allclose(image, ref_image, atol=1e-12)
    assert torch.allclose(alpha, ref_alpha, atol=1e-12)
    assert float(ref_alpha.detach().max()) > 0.99  # some pixels saturate (transmittance stop exercised)
    weights = torch.rand(height, width, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = (torch.cat([image, alpha], -1) * weights).sum()
    ref_loss = (torch.cat([ref_image, ref_alpha], -1) * weights).sum()
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert torch.allclose(grad, ref_grad, atol=1e-9)


def single_gaussian_scene(opacity: float, scale: float) -> GaussianScene:
    scene = GaussianScene(GaussiansConfig(num_points=1))
    with torch.no_grad():
        scene.means.zero_()
        scene.quats.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        scene.log_scales.fill_(math.log(scale))
        scene.logit_opacities.fill_(math.log(opacity / (1 - opacity)))
        scene.sh_dc.copy_(torch.tensor([[[0.8, -0.3, 0.1]]]))
    return scene


def test_single_gaussian_renders_centered_blob() -> None:
    opacity, scale = 0.7, 0.1
    scene = single_gaussian_scene(opacity, scale)
    cams = cameras_from_spherical(torch.tensor([20.0, -5.0]), torch.tensor([10.0, 200.0]),
                                  torch.tensor([2.5, 2.0]), torch.tensor([40.0, 40.0]))
    height = width = 32
    with torch.no_grad():
        out = render_splats(scene.render_inputs(), cams, height, width, background=Background(color=(0.0, 0.0, 1.0)),
                            backend="torch")
    focal = cams.focal(height)
    for view in range(2):
        # screen-space std: f * scale / distance, plus the 0.3 px^2 low-pass; pixel centers sit at +-0.5 from
        # the image center, so the four central pixels have alpha o exp(-0.5 * 2 * 0.5^2 / var).
        var = float((focal[view] * scale / cams.distance[view]) ** 2) + 0.3
        expected_peak = opacity * math.exp(-0.25 / var)
        alpha = out.opacity[view, ..., 0]
        center = alpha[15:17, 15:17]
        assert torch.allclose(center, torch.full_like(center, expected_peak), rtol=2e-3)
        assert float(alpha.max()) == pytest.approx(expected_peak, rel=2e-3)
        assert torch.allclose(alpha, alpha.flip(0), atol=1e-6) and torch.allclose(alpha, alpha.flip(1), atol=1e-6)
        color = (0.28209479177387814 * torch.tensor([0.8, -0.3, 0.1]) + 0.5).clamp(min=0)
        expected_rgb = expected_peak * color + (1 - expected_peak) * torch.tensor([0.0, 0.0, 1.0])
        assert torch.allclose(out.rgb[view, 16, 16], expected_rgb, atol=2e-3)
        # depth: opacity times the distance along the central rays (~ camera distance)
        assert float(out.depth[view, 16, 16, 0] / alpha[16, 16]) == pytest.approx(
            float(cams.distance[view]), rel=1e-3)
        assert float(alpha[0, 0]) == 0.0
    assert out.normal is None and out.orientation_loss is None
    assert out.info["radii"].shape == (2, 1) and out.info["means2d"].shape == (2, 1, 2)


def test_render_gradients_reach_all_parameters() -> None:
    scene = GaussianScene(GaussiansConfig(num_points=200, sh_degree=2, init_scale=0.05, init_opacity=0.5))
    with torch.no_grad():
        scene.sh_rest.normal_(0.0, 0.1)
        scene.log_scales.add_(torch.tensor([0.0, -0.7, 0.5]))  # anisotropic, or rotations change nothing
        scene.quats.add_(0.3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(0)))
    cams = cameras_from_spherical(torch.tensor([10.0]), torch.tensor([45.0]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    out = render_splats(scene.render_inputs(), cams, 24, 24, background=Background(), backend="torch")
    (out.rgb.sum() + out.depth.sum()).backward()
    for name, param in scene.parameters_by_name().items():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    means2d_grad = out.info["means2d"].grad
    assert means2d_grad is not None and float(means2d_grad.abs().sum()) > 0


def test_render_rejects_bad_arguments() -> None:
    scene = GaussianScene(GaussiansConfig(num_points=4))
    cams = cameras_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    with pytest.raises(ConfigError, match="backend"):
        render_splats(scene.render_inputs(), cams, 8, 8, background=Background(), backend="vulkan")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            render_splats(scene.render_inputs(), cams, 8, 8, background=Background(), backend="cuda")
