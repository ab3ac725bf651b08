"""The density of a Gaussian scene on the marching-cubes grid, by scattering Gaussians into the grid (export).

:meth:`GaussianScene.density <dreamengine.scenes.gaussians.GaussianScene.density>` answers point queries:
``sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` over the Gaussians whose box
``mu_i +- 3 max(scale_i)`` contains ``x``. Evaluated at every point of a ``R^3`` grid, that is a gather over
many Gaussians per point. Here every Gaussian instead adds its term to the grid points inside its box (the
same sum, the same truncation), which costs the number of (Gaussian, grid point in its box) pairs, with no
search: seconds at 256^3 where the point queries take hours. Tests pin it to ``scene.density``.

Texture baking evaluates the albedo at up to a million texels, where ``GaussianScene.albedo`` (a weighted
mean over the Gaussians near each point, plus a full nearest-mean search per chunk) takes minutes;
:func:`gaussian_albedo_field` scatters the weighted color sums onto the grid instead and interpolates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from dreamengine.core.render import SplatTensors
from dreamengine.export.marching import grid_axis
from dreamengine.renderers.splat import SH_C0, covariance_and_precision


@torch.no_grad()
def gaussian_density_grid(splats: SplatTensors, radius: float, resolution: int,
                          max_pairs: int = 1 << 22) -> np.ndarray:
    """``scene.density`` on the ``resolution^3`` grid over ``[-radius, radius]^3``, [R, R, R] float32, laid out
    like :func:`~dreamengine.export.marching.sample_density_grid` (entry ``[i, j, k]`` at ``(x_i, y_j, z_k)``).

    Args:
        max_pairs: (Gaussian, grid point) pairs evaluated at once (memory bound).
    """
    density, _ = _scatter(splats, radius, resolution, None, max_pairs)
    return density.view(resolution, resolution, resolution).cpu().numpy()


@torch.no_grad()
def gaussian_albedo_field(splats: SplatTensors, radius: float, resolution: int,
                          max_pairs: int = 1 << 22) -> Callable[[Tensor], Tensor]:
    """A fast stand-in for ``scene.albedo`` when it must be evaluated at very many points (texture baking).

    ``scene.albedo(x)`` is the weighted mean ``sum_i w_i(x) c_i / sum_i w_i(x)`` of the Gaussians' degree-0
    colors with the density weights. Here both sums are scattered onto the ``resolution^3`` grid once and
    interpolated trilinearly at the query points before dividing; where no Gaussian reaches, the color of
    the nearest mean is used, as ``scene.albedo`` does. It differs from the exact albedo only by the
    interpolation (tests bound the difference).

    Returns:
        points [N, 3] -> rgb [N, 3] in [0, 1].
    """
    colors = (splats.sh_coeffs.detach()[:, 0, :] * SH_C0 + 0.5).clamp(0.0, 1.0)  # [N, 3], as GaussianScene.albedo
    density, weighted = _scatter(splats, radius, resolution, colors, max_pairs)
    shape = (1, resolution, resolution, resolution)
    grid = torch.cat([density.view(1, *shape), weighted.t().reshape(3, *shape[1:])[None]], dim=1).cpu()  # [1, 4, R^3]
    tree = cKDTree(splats.means.detach().cpu().numpy())
    colors_cpu = colors.cpu()

    def albedo(points: Tensor) -> Tensor:
        # grid_sample's last coordinate indexes the first volume axis: pass (z, y, x)
        coords = (points.detach().cpu().float() / radius).flip(-1).view(1, -1, 1, 1, 3)
        sampled = torch.nn.functional.grid_sample(grid, coords, mode="bilinear", align_corners=True)
        sampled = sampled.view(4, -1).t()  # [N, 4]: density, weighted rgb
        total = sampled[:, :1]
        rgb = sampled[:, 1:] / total.clamp(min=1e-12)
        empty = (total[:, 0] <= 1e-6).nonzero().squeeze(-1)
        if empty.numel():
            _, nearest = tree.query(points[empty].detach().cpu().numpy())
            rgb[empty] = colors_cpu[torch.as_tensor(nearest)]
        return rgb.clamp(0.0, 1.0).to(points.device)

    return albedo


def _scatter(splats: SplatTensors, radius: float, resolution: int, features: Tensor | None,
             max_pairs: int) -> tuple[Tensor, Tensor | None]:
    """Sum of the Gaussians' density terms (and of the terms times ``features`` [N, C]) at every grid point:
    ([R^3], [R^3, C] or None), flat in ``(i * R + j) * R + k`` order.

    Gaussians are processed in batches of equal box size ``s`` (grid points per axis): a batch is a dense
    [G, s, s, s] block whose quadratic forms are sums of broadcast per-axis terms, then one ``index_add``.
    """
    device = splats.means.device
    axis = torch.as_tensor(grid_axis(radius, resolution), dtype=torch.float32, device=device)  # as sampled
    voxel = 2.0 * radius / (resolution - 1)
    means = splats.means.detach().float()
    _, precision = covariance_and_precision(splats.quats.detach(), splats.scales.detach())
    reach = 3.0 * splats.scales.detach().amax(dim=-1)  # [N], the box half-size of GaussianScene._contributions
    opacities = splats.opacities.detach()
    # Grid index ranges per axis (a hair wider against rounding; the exact box test below decides).
    low = torch.ceil((means - reach[:, None] + radius) / voxel - 1e-3).long().clamp(0, resolution - 1)
    high = torch.floor((means + reach[:, None] + radius) / voxel + 1e-3).long().clamp(-1, resolution - 1)
    span = (high - low + 1).clamp(min=0)  # [N, 3]
    size = torch.where(span.amin(dim=-1) > 0, span.amax(dim=-1), torch.zeros_like(span[:, 0]))  # 0: off the grid
    volume = torch.zeros(resolution**3, dtype=torch.float32, device=device)
    feature_volume = None if features is None else torch.zeros(resolution**3, features.shape[1], device=device)
    steps = torch.arange(resolution, device=device)
    for s in size.unique().tolist():
        if s == 0:
            continue
        for ids in (size == s).nonzero().squeeze(-1).split(max(1, max_pairs // (s**3))):
            index = low[ids, :, None] + steps[:s]  # [G, 3, s] grid indices per axis
            valid = steps[:s] < span[ids, :, None]  # [G, 3, s] inside this Gaussian's own range
            index = index.clamp(max=resolution - 1)
            diff = axis[index] - means[ids, :, None]  # [G, 3, s]
            valid &= diff.abs() <= reach[ids, None, None]
            dx, dy, dz = diff[:, 0, :, None, None], diff[:, 1, None, :, None], diff[:, 2, None, None, :]
            p = precision[ids]
            form = (p[:, 0, 0, None, None, None] * dx * dx + p[:, 1, 1, None, None, None] * dy * dy
                    + p[:, 2, 2, None, None, None] * dz * dz
                    + 2.0 * (p[:, 0, 1, None, None, None] * dx * dy + p[:, 0, 2, None, None, None] * dx * dz
                             + p[:, 1, 2, None, None, None] * dy * dz))  # [G, s, s, s]
            inside = valid[:, 0, :, None, None] & valid[:, 1, None, :, None] & valid[:, 2, None, None, :]
            weights = opacities[ids, None, None, None] * torch.exp(-0.5 * form) * inside
            flat = ((index[:, 0, :, None, None] * resolution + index[:, 1, None, :, None]) * resolution
                    + index[:, 2, None, None, :]).reshape(-1)
            volume.index_add_(0, flat, weights.reshape(-1))
            if feature_volume is not None:
                weighted = weights[..., None] * features[ids, None, None, None, :]
                feature_volume.index_add_(0, flat, weighted.reshape(-1, features.shape[1]))
    return volume, feature_volume


__all__ = ["gaussian_albedo_field", "gaussian_density_grid"]
