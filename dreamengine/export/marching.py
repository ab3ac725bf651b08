"""Density field -> triangle mesh by marching cubes.

The scene is a NeRF: a density ``sigma(x) >= 0`` that is large inside the object. Its surface is the
iso-surface ``sigma == threshold``. We sample the density on a regular grid over ``[-radius, radius]^3``,
run scikit-image's marching cubes on it and return a world-space (Z-up) mesh whose faces wind
counter-clockwise seen from outside, so face normals point away from the object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes
from torch import Tensor

from dreamengine.errors import ExportError

DensityFn = Callable[[Tensor], Tensor]  # [N, 3] world points -> [N] density


def field_device(fn: Callable[..., Tensor]) -> torch.device:
    """The device to query ``fn`` on: that of its module's parameters when ``fn`` is a bound method of an
    ``nn.Module`` (``scene.density``), else the CPU."""
    owner = getattr(fn, "__self__", fn)
    if isinstance(owner, torch.nn.Module):
        for tensor in list(owner.parameters()) + list(owner.buffers()):
            return tensor.device
    return torch.device("cpu")


def grid_axis(radius: float, resolution: int) -> np.ndarray:
    """The ``resolution`` sample coordinates along one axis, from -radius to +radius inclusive, [R]."""
    return np.linspace(-radius, radius, resolution)


@torch.no_grad()
def sample_density_grid(density_fn: DensityFn, radius: float, resolution: int, chunk: int = 65536,
                        device: torch.device | None = None) -> np.ndarray:
    """Evaluate ``density_fn`` on the ``resolution^3`` grid over ``[-radius, radius]^3``.

    Returns:
        [R, R, R] float32 array; entry ``[i, j, k]`` is the density at ``(x_i, y_j, z_k)`` with
        ``x = grid_axis(radius, resolution)`` (same for y, z).
    """
    device = field_device(density_fn) if device is None else device
    axis = torch.as_tensor(grid_axis(radius, resolution), dtype=torch.float32, device=device)
    n = resolution**3
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=device)  # flat indices into the grid
        i = idx // (resolution * resolution)
        j = (idx // resolution) % resolution
        k = idx % resolution
        points = torch.stack([axis[i], axis[j], axis[k]], dim=-1)  # [n, 3]
        sigma = density_fn(points).reshape(-1)
        if sigma.shape[0] != points.shape[0]:
            raise ExportError(
                f"the density function returned {sigma.shape[0]} values for {points.shape[0]} points; "
                "it must map [N, 3] points to [N] densities"
            )
        out[start:start + chunk] = sigma.float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def extract_mesh(density_fn: DensityFn, radius: float = 1.0, resolution: int = 128,
                 threshold: float = 25.0, chunk: int = 65536,
                 device: torch.device | None = None) -> trimesh.Trimesh:
    """Extract the surface ``density == threshold`` of a density field as a closed, outward-facing mesh.

    Args:
        density_fn: maps world points [N, 3] to densities [N] (called under ``torch.no_grad``,
            ``chunk`` points at a time, on ``device``; default: the device of the field's module).
        radius: the grid covers ``[-radius, radius]^3`` (the scene's bounding cube).
        resolution: samples per axis; the voxel size is ``2 * radius / (resolution - 1)``.
        threshold: the iso-level. Densities above it are inside the object.

    Returns:
        A world-space (Z-up) ``trimesh.Trimesh`` (not merged or cleaned; see ``clean_mesh``). The grid
        is padded by one empty voxel on every side before marching, so parts of the object that touch
        the boundary of the cube are capped there instead of leaving holes; such caps lie between
        ``radius`` and ``radius + voxel``.

    Raises:
        ExportError: for bad arguments, non-finite densities, or a grid with no crossing of ``threshold``.
    """
    _check_grid(radius, resolution, threshold)
    return mesh_from_volume(sample_density_grid(density_fn, radius, resolution, chunk, device), radius, threshold)


def _check_grid(radius: float, resolution: int, threshold: float | None) -> None:
    if resolution < 2:
        raise ExportError(f"export resolution must be at least 2, got {resolution}")
    if not radius > 0:
        raise ExportError(f"export radius must be positive, got {radius}")
    if threshold is None or not np.isfinite(threshold):
        raise ExportError(f"export.threshold must be a finite number, got {threshold}")


def fill_voids(volume: np.ndarray, threshold: float) -> int:
    """Raise every enclosed pocket of ``volume`` (grid points at or below ``threshold`` that cannot reach the
    grid's boundary through other such points, 6-connected) to just above ``threshold``, in place, and return
    how many points were raised.

    A NeRF's density often dips below the surface level inside the object; marching cubes then adds an
    inverted inner shell around each dip, so a sphere comes out as two nested surfaces (Euler characteristic
    far from 2, not one piece). Only the outer surface is seen from outside, so filling the pockets changes no
    render of the mesh.
    """
    inside = volume > threshold
    pockets = ndimage.binary_fill_holes(inside) & ~inside
    count = int(pockets.sum())
    if count:
        volume[pockets] = threshold + max(1e-3, 0.5 * (float(volume.max()) - threshold))
    return count


def mesh_from_volume(volume: np.ndarray, radius: float, threshold: float,
                     fill_pockets: bool = True) -> trimesh.Trimesh:
    """Marching cubes of a density grid [R, R, R] laid out as :func:`sample_density_grid` returns it (see
    :func:`extract_mesh`); with ``fill_pockets`` the enclosed pockets below the level are filled first
    (:func:`fill_voids`). ``volume`` may be modified in place."""
    resolution = volume.shape[0]
    _check_grid(radius, resolution, threshold)
    if np.isnan(volume).any():
        raise ExportError(
            f"the density field returned NaN at {int(np.isnan(volume).sum())} of {volume.size} grid points; "
            "the scene is corrupt (resume from an earlier checkpoint)"
        )
    volume = np.nan_to_num(volume, copy=False, posinf=np.finfo(np.float32).max / 2)
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < threshold < hi:
        where = "below" if hi <= threshold else "above"
        hint = "lower export.threshold or train longer" if where == "below" else "raise export.threshold"
        raise ExportError(
            f"the density field has no surface at threshold {threshold:g} (density ranges {lo:.2f} to "
            f"{hi:.2f} on a {resolution}^3 grid, everything is {where} it); {hint}"
        )

    if fill_pockets:
        fill_voids(volume, threshold)
    # One voxel of padding, well below the threshold, closes surfaces cut by the grid boundary.
    empty = min(lo, threshold) - abs(threshold) - 1.0
    padded = np.pad(volume, 1, mode="constant", constant_values=empty)
    voxel = 2.0 * radius / (resolution - 1)
    # We march on -density (negative inside, like an SDF): with scikit-image's default
    # gradient_direction="descent" that gives counter-clockwise faces seen from outside (pinned by tests).
    # Negated in place: at 512^3 every copy of the grid is half a gigabyte.
    np.negative(padded, out=padded)
    verts, faces, _, _ = marching_cubes(padded, level=-threshold, spacing=(voxel, voxel, voxel))
    verts = verts - (radius + voxel)  # padded index 1 is the grid's first sample at -radius
    return trimesh.Trimesh(vertices=verts.astype(np.float64), faces=faces.astype(np.int64), process=False)
