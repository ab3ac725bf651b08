"""Per-vertex colors from a color field (the scene's albedo), and the sRGB <-> linear transfer functions.

Colors in DreamEngine (renders, albedo, textures, vertex colors) are sRGB-encoded display values, as the
teacher's images are. glTF stores base-color *textures* sRGB-encoded but vertex colors (``COLOR_0``) *linear*,
so GLB vertex colors are converted on the way out and back (:mod:`dreamengine.export.mesh_io`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh
from torch import Tensor

from dreamengine.errors import ExportError
from dreamengine.export.marching import field_device

ColorFn = Callable[[Tensor], Tensor]  # [N, 3] world points -> [N, 3] RGB in [0, 1]


@torch.no_grad()
def color_vertices(mesh: trimesh.Trimesh, color_fn: ColorFn, chunk: int = 65536, inset: float = 0.0,
                   device: torch.device | None = None) -> trimesh.Trimesh:
    """Color each vertex with ``color_fn`` evaluated at (or just inside) the vertex.

    Args:
        mesh: V vertices [V, 3] in world space, outward normals.
        color_fn: maps world points [N, 3] to RGB [N, 3] in [0, 1] (called under ``torch.no_grad``,
            ``chunk`` points at a time, on ``device``; default: the device of the field's module).
        inset: sample at ``vertex - inset * normal`` (world units). The iso-surface of a NeRF sits in the
            thin low-density shell around the object, where the color field receives little gradient
            and can be off; half a marching-cubes voxel inward reads the color that the renders actually
            showed. 0 samples at the vertex.

    Returns:
        A copy of ``mesh`` with RGBA uint8 vertex colors ([V, 4], alpha 255); values outside [0, 1]
        are clipped, NaN becomes 0.
    """
    if len(mesh.vertices) == 0:
        raise ExportError("cannot color an empty mesh (it has no vertices)")
    device = field_device(color_fn) if device is None else device
    points = np.asarray(mesh.vertices, dtype=np.float64)
    if inset != 0.0:
        points = points - inset * np.asarray(mesh.vertex_normals, dtype=np.float64)
    points_t = torch.as_tensor(points, dtype=torch.float32, device=device)

    rgb = np.empty((len(points), 3), dtype=np.float32)
    for start in range(0, len(points), chunk):
        part = color_fn(points_t[start:start + chunk])
        if part.shape != (min(chunk, len(points) - start), 3):
            raise ExportError(f"the color function returned shape {tuple(part.shape)}; it must map "
                              "[N, 3] points to [N, 3] colors")
        rgb[start:start + chunk] = part.float().cpu().numpy()
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0)

    rgba = np.full((len(points), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(rgb * 255.0).astype(np.uint8)
    colored = mesh.copy()
    colored.visual = trimesh.visual.ColorVisuals(mesh=colored, vertex_colors=rgba)
    return colored


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function's inverse (IEC 61966-2-1), for values in [0, 1]."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1), for values in [0, 1]."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.where(values <= 0.0031308, 12.92 * values, 1.055 * values ** (1.0 / 2.4) - 0.055)


def convert_vertex_colors(mesh: trimesh.Trimesh, transfer: Callable[[np.ndarray], np.ndarray]) -> None:
    """Apply ``transfer`` (:func:`srgb_to_linear` or :func:`linear_to_srgb`) to a mesh's RGB vertex colors in
    place (alpha unchanged); meshes without vertex colors are left alone."""
    if mesh.visual.kind != "vertex":
        return
    rgba = np.asarray(mesh.visual.vertex_colors, dtype=np.float64) / 255.0
    rgba[:, :3] = transfer(rgba[:, :3])
    mesh.visual.vertex_colors = np.round(rgba * 255.0).astype(np.uint8)
