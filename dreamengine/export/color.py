"""Per-vertex colors from a color field (the scene's albedo)."""

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
