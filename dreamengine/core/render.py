"""What renderers take and return: plain tensors, in the style of gsplat and nerfacc.

* A volume renderer takes a :class:`~dreamengine.core.protocols.Field` (a callback object: points -> density,
  albedo, normals), a splat renderer a :class:`SplatTensors`, a mesh rasterizer a :class:`MeshTensors`. Scenes
  hand these over with ``scene.render_inputs()``; renderers never see a scene.
* Every renderer returns a :class:`RenderOut`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.core.cameras import Cameras

ColorFn = Callable[[Tensor], Tensor]  # world points [N, 3] -> rgb [N, 3]


@dataclass
class RenderOut:
    """What a render returns. Images are [B, H, W, C]."""

    rgb: Float[Tensor, "B H W 3"]  # in [0, 1], composited over the background
    opacity: Float[Tensor, "B H W 1"]  # accumulated weight
    depth: Float[Tensor, "B H W 1"]  # sum of w t (0 where empty); divide by opacity for surface depth
    normal: Float[Tensor, "B H W 3"] | None  # sum of w n (world space, length <= opacity); None if not computed
    orientation_loss: Tensor | None  # scalar; None when normals were not computed
    # renderer-specific extras: the splat renderer's 'means2d' [B, N, 2] (gradient retained), 'radii' [B, N],
    # 'width', 'height', 'n_cameras', which Gaussian densification reads
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplatTensors:
    """N 3D Gaussians with spherical-harmonic colors, as a splat renderer takes them (``sigmoid``/``exp``
    already applied, quaternions not necessarily normalized)."""

    means: Float[Tensor, "N 3"]
    quats: Float[Tensor, "N 4"]  # (w, x, y, z), any norm
    scales: Float[Tensor, "N 3"]  # positive
    opacities: Float[Tensor, " N"]  # in (0, 1)
    sh_coeffs: Float[Tensor, "N K 3"]  # K >= (sh_degree + 1)^2, degree 0 first
    sh_degree: int


@dataclass
class MeshTensors:
    """A triangle mesh and its appearance, as tensors on one device.

    Exactly one appearance is used, in this order: a ``texture`` (with ``uv``), ``vertex_colors``, a
    ``color_fn``; with none of them the surface is white. ``dreamengine.renderers.raster.mesh_tensors_from_trimesh``
    builds one from a trimesh mesh.
    """

    vertices: Float[Tensor, "V 3"]  # world positions (may require grad)
    faces: Int[Tensor, "F 3"]  # long, counter-clockwise seen from outside
    uv: Float[Tensor, "T 2"] | None = None  # texture coordinates, (0, 0) = bottom-left of the image (OBJ/trimesh)
    uv_faces: Int[Tensor, "F 3"] | None = None  # long into ``uv``; None: ``faces`` index ``uv`` too (T == V)
    texture: Float[Tensor, "Ht Wt 3"] | None = None  # in [0, 1], row 0 = top of the image (v = 1)
    vertex_colors: Float[Tensor, "V 3"] | None = None  # in [0, 1]
    color_fn: ColorFn | None = None  # world points [N, 3] -> rgb [N, 3] (a texture field)
    neighbors: Int[Tensor, "F 3"] | None = None  # from raster.face_neighbors(); computed on demand when None

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device: torch.device | str) -> MeshTensors:
        moved = {name: getattr(self, name).to(device) for name in
                 ("vertices", "faces", "uv", "uv_faces", "texture", "vertex_colors", "neighbors")
                 if getattr(self, name) is not None}
        return replace(self, **moved)


def render_fixed(renderer: Any, inputs: Any, background: torch.nn.Module, cameras: Cameras, height: int,
                 width: int) -> RenderOut:
    """A deterministic render (no jitter, lights from a fixed seed, no gradient) for previews, evaluation,
    export and reports: ``renderer`` is a :class:`~dreamengine.core.protocols.Renderer`, ``inputs`` what the
    scene hands it (``scene.render_inputs()``)."""
    with torch.no_grad():
        return renderer(inputs, background, cameras, height, width, generator=torch.Generator().manual_seed(0),
                        perturb=False)


__all__ = ["ColorFn", "MeshTensors", "RenderOut", "SplatTensors", "render_fixed"]
