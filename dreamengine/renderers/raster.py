"""Differentiable rendering of triangle meshes by rasterization, as a function over tensors.

Two backends behind one function, :func:`render_mesh`:

* ``cuda``: nvdiffrast (``rasterize``, ``interpolate``, ``texture``, ``antialias``), imported lazily and used
  when it imports and the mesh lives on a CUDA device. Never required.
* ``torch``: the pure-torch path below, which runs everywhere and is what the tests pin.

The torch path, per view:

1. **Projection.** World vertices go to camera space (``cameras.py``'s OpenGL convention: the camera looks
   along -Z) and to pixel coordinates ``x = W/2 + f x_c / w``, ``y = H/2 - f y_c / w`` with ``w = -z_c`` the
   depth along the optical axis and ``f`` the focal length in pixels. Pixel ``(i, j)`` has its center at
   ``(j + 0.5, i + 0.5)``, the same rays as :meth:`Cameras.rays`. Faces with a vertex closer than ``near``
   to the camera plane are not drawn (no clipping: cameras look at the object from outside).
2. **Rasterization** (no gradient). Each face is tested against the pixel centers inside its screen
   bounding box, all faces at once (a flat list of (face, pixel) pairs, in chunks bounding the memory). A
   pixel center is covered when its three screen-space barycentrics are >= 0 (a tiny negative tolerance,
   so no pixel falls through the crack between two faces). Visibility is a z-buffer on the perspective-
   correct depth ``w``: one ``scatter_reduce(amin)`` over int64 keys ``(bits of float32 w) << 32 | face``
   (positive floats order like their bit patterns), so the nearest face wins and ties go to the lowest id.
   Faces are drawn from both sides (no culling).
3. **Interpolation** (differentiable). For each covered pixel the barycentrics are recomputed from the
   projected vertices of its face and made perspective-correct, ``b_i = (l_i / w_i) / sum_j (l_j / w_j)``
   with ``l`` the screen-space barycentrics. They are explicit functions of the vertex positions, so the
   gradient of every interpolated quantity reaches the vertices inside the covering face. World position,
   UV, vertex color and vertex normal are interpolated with ``b``; the texture is sampled bilinearly with
   ``grid_sample`` (exact gradients to the texels), or a color field is evaluated at the world position.
4. **Shading**, with :func:`dreamengine.renderers.volume.shade` (same AMBIENT/DIFFUSE constants and modes
   as the volume renderer): ``albedo``, ``diffuse`` or ``textureless`` with a point light per view.
5. **Antialiasing** (silhouette gradients), after nvdiffrast's ``antialias`` (Laine et al. 2020, "Modular
   primitives for high-performance differentiable rendering"): for every pair of horizontally or
   vertically adjacent pixels whose face ids differ, the nearer of the two faces is the occluder; if the
   segment between the two pixel centers leaves the occluder through a **silhouette edge** (a boundary
   edge, a non-manifold edge, or an edge between a front- and a back-facing face in this view), crossing at
   ``t`` in [0, 1] from the occluder's pixel center, the pixels are blended as a box filter would see that
   edge: for ``t > 0.5`` the far pixel moves ``t - 0.5`` of the way to the occluder's value, for
   ``t < 0.5`` the occluder's pixel moves ``0.5 - t`` of the way to the far pixel's value. ``t`` is a
   differentiable function of the edge's projected end points, which is where vertices get gradients from
   coverage changes (the sign of the silhouette gradient is right: moving an edge outward over background
   raises the opacity of the pixel beyond it). As in nvdiffrast, horizontal pairs handle the edges steeper
   than 45 degrees and vertical pairs the others, so each edge is counted once and the total coverage
   gradient matches the box filter's (tests compare it with finite differences). Unlike nvdiffrast, when
   the segment leaves the occluder through an interior edge, it follows the mesh across that edge (up to
   ``max_walk`` faces) until it reaches a silhouette edge: near a contour the faces are foreshortened to
   slivers and the face under a pixel center rarely owns the silhouette edge itself. The blend is applied
   to rgb, opacity, depth and normal, so opacity becomes fractional at silhouettes. Edge adjacency is
   computed on positions welded by exact equality, so UV seams are not silhouettes.

Outputs follow :class:`~dreamengine.core.render.RenderOut`: ``rgb`` composited over the background,
``opacity`` (1 on covered pixels, fractional at antialiased silhouettes), ``depth`` the distance from the
camera center to the surface point along the pixel's ray, times the opacity (0 where empty, the volume
renderer's ``sum w t`` convention: divide by opacity for the surface distance), ``normal`` the unit
interpolated vertex normal times the opacity, and no orientation loss (``None``; it is a volume regularizer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from dreamengine.core.backends import optional_import
from dreamengine.core.backends import resolve_backend as resolve_any_backend
from dreamengine.core.background import sample_light_positions
from dreamengine.core.cameras import Cameras
from dreamengine.core.render import MeshTensors, RenderOut
from dreamengine.errors import ConfigError
from dreamengine.renderers.volume import SHADINGS, AlbedoWarmup, shade

INSIDE_TOLERANCE = -1e-6  # screen barycentrics this far below 0 still count as inside (no cracks)
INT64_MAX = torch.iinfo(torch.int64).max
_NVDIFFRAST_CONTEXTS: dict[torch.device, Any] = {}


def mesh_tensors_from_trimesh(mesh: trimesh.Trimesh, device: torch.device | str = "cpu") -> MeshTensors:
    """Tensors of a trimesh mesh: its base-color texture and UVs when it has them (times the material's
    base color factor), else its vertex colors, else a uniform material color, else white.

    A textured mesh is usually split at UV seams (several vertices at one position); positions are
    welded by exact equality and the UVs keep their own ``uv_faces``, so seams are not silhouettes and
    vertex normals are smooth across them.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise ConfigError("cannot render a mesh with no faces")
    out: dict[str, Any] = {}
    visual = mesh.visual
    image, factor = _material_image_and_factor(getattr(visual, "material", None))
    uv = getattr(visual, "uv", None)
    if visual.kind == "texture" and image is not None and uv is not None and len(uv) == len(vertices):
        welded, inverse = np.unique(vertices, axis=0, return_inverse=True)
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 * factor[:3]
        out = {"uv": torch.as_tensor(np.asarray(uv), dtype=torch.float32),
               "uv_faces": torch.as_tensor(faces), "texture": torch.as_tensor(texture)}
        vertices, faces = welded, inverse.reshape(-1)[faces]
    elif visual.kind == "vertex":
        colors = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        out = {"vertex_colors": torch.as_tensor(colors)}
    elif image is None and factor is not None:
        out = {"vertex_colors": torch.as_tensor(np.tile(factor[:3], (len(vertices), 1)), dtype=torch.float32)}
    tensors = MeshTensors(vertices=torch.as_tensor(vertices, dtype=torch.float32),
                          faces=torch.as_tensor(faces, dtype=torch.long), **out)
    tensors = tensors.to(device)
    tensors.neighbors = face_neighbors(tensors.vertices, tensors.faces)
    return tensors


def _material_image_and_factor(material: Any) -> tuple[Any, np.ndarray | None]:
    """(base color PIL image or None, RGBA factor in [0, 1] or None) of a trimesh material."""
    if material is None:
        return None, None
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        factor = material.baseColorFactor
        factor = None if factor is None else np.asarray(factor, dtype=np.float32) / 255.0
        image = material.baseColorTexture
        return image, (factor if factor is not None or image is None else np.ones(4, dtype=np.float32))
    image = getattr(material, "image", None)
    diffuse = getattr(material, "diffuse", None)
    factor = None if diffuse is None else np.asarray(diffuse, dtype=np.float32) / 255.0
    if image is not None:
        factor = np.ones(4, dtype=np.float32)
    return image, factor


# ---------------------------------------------------------------------------------------------------
# Geometry helpers


def face_neighbors(vertices: Tensor, faces: Tensor) -> Tensor:
    """The face across each edge, [F, 3] long: entry ``[f, k]`` is the other face of the edge from vertex
    ``k`` to vertex ``(k + 1) % 3`` of face ``f``; -1 for a boundary edge, -2 for a non-manifold edge
    (three or more faces). Vertices at exactly the same position count as one (UV seams are not boundaries).
    """
    num_faces = faces.shape[0]
    _, weld = torch.unique(vertices.detach(), dim=0, return_inverse=True)
    welded = weld[faces]  # [F, 3]
    a, b = welded, welded.roll(-1, dims=1)  # edge k: (v_k, v_k+1)
    low, high = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
    key = low * (int(weld.max()) + 1) + high  # [3F]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    _, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    group_count = torch.repeat_interleave(counts, counts)  # [3F] size of each edge's group, in sorted order
    group_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    position = torch.arange(key.shape[0], device=key.device) - group_start  # 0 or 1 within a pair
    partner_sorted = torch.where(position == 0, order.roll(-1), order.roll(1))  # the other member of a pair
    result_sorted = torch.where(group_count == 2, partner_sorted // 3,
                                torch.where(group_count == 1, -1, -2))
    result = torch.empty_like(result_sorted)
    result[order] = result_sorted
    return result.view(num_faces, 3)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V, 3] (differentiable); 0 for vertices in no face."""
    tri = vertices[faces]  # [F, 3, 3]
    face_normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    summed = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), face_normals.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(summed, dim=-1, eps=1e-20)


def world_to_camera(points: Tensor, cameras: Cameras) -> Tensor:
    """World points [N, 3] -> camera-space points [B, N, 3] (OpenGL: the camera looks along -Z)."""
    rotation = cameras.c2w[:, :3, :3]  # [B, 3, 3]
    translation = cameras.c2w[:, :3, 3]  # [B, 3]
    return torch.einsum("bji,bnj->bni", rotation, points[None] - translation[:, None, :])


def project(points: Tensor, cameras: Cameras, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World points [N, 3] -> pixel coordinates [B, N, 2] (x right, y down, pixel centers at +0.5) and
    depth along the optical axis ``w = -z_camera`` [B, N]."""
    cam = world_to_camera(points, cameras)
    w = -cam[..., 2]
    focal = cameras.focal(height).to(points.dtype)[:, None]  # [B, 1]
    safe_w = torch.where(w.abs() > 1e-12, w, torch.full_like(w, 1e-12))
    x = 0.5 * width + focal * cam[..., 0] / safe_w
    y = 0.5 * height - focal * cam[..., 1] / safe_w
    return torch.stack([x, y], dim=-1), w


def screen_barycentrics(tri_xy: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """Screen-space barycentrics of the points ``(px, py)`` [N] in triangles ``tri_xy`` [N, 3, 2].

    Returns (barycentrics [N, 3], twice the signed area [N]). Differentiable in ``tri_xy``."""
    x, y = tri_xy[..., 0], tri_xy[..., 1]  # [N, 3]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    safe = torch.where(area.abs() > 1e-20, area, torch.full_like(area, 1e-20))
    # l_k = signed area of (P, v_k+1, v_k+2) / signed area of (v0, v1, v2)
    x1, y1, x2, y2 = x.roll(-1, 1), y.roll(-1, 1), x.roll(-2, 1), y.roll(-2, 1)
    edge = (x2 - x1) * (py[:, None] - y1) - (y2 - y1) * (px[:, None] - x1)
    return edge / safe[:, None], area


# ---------------------------------------------------------------------------------------------------
# Rasterization (no gradient)


@dataclass
class Fragments:
    """Which face each pixel sees. All [B, H, W]."""

    face_id: Tensor  # long, -1 where no face covers the pixel center
    zdepth: Tensor  # depth along the optical axis (w) of the visible surface, inf where empty


@torch.no_grad()
def rasterize_triangles(tri_xy: Tensor, tri_w: Tensor, height: int, width: int, near: float = 1e-6,
                        max_pairs: int = 1 << 21) -> Fragments:
    """Z-buffer rasterization of B batches of F triangles given in pixel coordinates.

    Args:
        tri_xy: [B, F, 3, 2] vertex pixel coordinates (x right, y down; pixel centers at ``index + 0.5``).
        tri_w: [B, F, 3] positive vertex depths; ``1 / w`` is interpolated linearly in screen space
            (perspective-correct). Pass ones for a flat (orthographic, UV-space) raster.
        near: faces with a vertex at ``w <= near`` are skipped.
        max_pairs: (face, pixel) candidate pairs evaluated at once (memory bound).
    Returns:
        :class:`Fragments` of shape [B, H, W].
    """
    batch, num_faces = tri_xy.shape[:2]
    device = tri_xy.device
    flat_xy = tri_xy.reshape(batch * num_faces, 3, 2).float()
    flat_w = tri_w.reshape(batch * num_faces, 3).float()
    x, y = flat_xy[..., 0], flat_xy[..., 1]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    valid = (flat_w > near).all(-1) & (area.abs() > 1e-12) & torch.isfinite(flat_xy).all(-1).all(-1)
    # Pixel index ranges whose centers lie in the bounding box; coordinates clamped first so far-away
    # vertices cannot overflow the integer conversion.
    x_lo = torch.ceil(x.amin(-1).clamp(-2.0, width + 2.0) - 0.5).long().clamp(min=0)
    x_hi = torch.floor(x.amax(-1).clamp(-2.0, width + 2.0) - 0.5).long().clamp(max=width - 1)
    y_lo = torch.ceil(y.amin(-1).clamp(-2.0, height + 2.0) - 0.5).long().clamp(min=0)
    y_hi = torch.floor(y.amax(-1).clamp(-2.0, height + 2.0) - 0.5).long().clamp(max=height - 1)
    span_x = (x_hi - x_lo + 1).clamp(min=0)
    span_y = (y_hi - y_lo + 1).clamp(min=0)
    counts = torch.where(valid, span_x * span_y, torch.zeros_like(span_x))  # [B * F]

    zbuffer = torch.full((batch * height * width,), INT64_MAX, dtype=torch.long, device=device)
    candidates = counts.nonzero().squeeze(-1)
    cumulative = torch.cumsum(counts[candidates], 0)
    start = 0
    while start < candidates.shape[0]:
        before = int(cumulative[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cumulative, before + max_pairs, right=True))
        end = max(end, start + 1)
        ids = candidates[start:end]
        start = end
        n = counts[ids]
        pair_face = torch.repeat_interleave(ids, n)  # flat (batch * F + face) per pair
        offsets = torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        local = torch.arange(pair_face.shape[0], device=device) - offsets
        px = x_lo[pair_face] + local % span_x[pair_face]
        py = y_lo[pair_face] + local // span_x[pair_face]
        bary, _ = screen_barycentrics(flat_xy[pair_face], px.float() + 0.5, py.float() + 0.5)
        inside = (bary >= INSIDE_TOLERANCE).all(-1)
        inv_w = (bary / flat_w[pair_face]).sum(-1)
        inside &= inv_w > 0
        if not inside.any():
            continue
        pair_face, px, py, inv_w = pair_face[inside], px[inside], py[inside], inv_w[inside]
        depth_bits = (1.0 / inv_w).float().view(torch.int32).long()  # positive floats sort like their bits
        key = (depth_bits << 32) | (pair_face % num_faces)
        pixel = (pair_face // num_faces) * (height * width) + py * width + px
        zbuffer.scatter_reduce_(0, pixel, key, reduce="amin")

    empty = zbuffer == INT64_MAX
    face_id = torch.where(empty, torch.full_like(zbuffer, -1), zbuffer & 0xFFFFFFFF)
    zdepth = (zbuffer >> 32).to(torch.int32).view(torch.float32)
    zdepth = torch.where(empty, torch.full_like(zdepth, float("inf")), zdepth)
    return Fragments(face_id.view(batch, height, width), zdepth.view(batch, height, width))


def rasterize_mesh(mesh: MeshTensors, cameras: Cameras, height: int, width: int,
                   near: float = 1e-6) -> Fragments:
    """The face seen at every pixel center of every view (no gradient), [B, H, W]."""
    xy, w = project(mesh.vertices.detach(), _cameras_like(cameras, mesh.vertices), height, width)
    return rasterize_triangles(xy[:, mesh.faces], w[:, mesh.faces], height, width, near=near)


# ---------------------------------------------------------------------------------------------------
# Rendering


def _cameras_like(cameras: Cameras, reference: Tensor) -> Cameras:
    """``cameras`` on the device and in the float dtype of ``reference``."""
    return Cameras(*(getattr(cameras, name).to(device=reference.device, dtype=reference.dtype)
                     for name in ("c2w", "fovy", "elevation", "azimuth", "distance")))


def resolve_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'cuda' (nvdiffrast) for a requested ``backend`` (auto | torch | cuda) on ``device``."""
    return resolve_any_backend(backend, device, component="mesh renderer", module="nvdiffrast.torch",
                               install="install nvdiffrast (built from its source repository)")


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup: texture [Ht, Wt, C] (row 0 = top), uv [N, 2] in [0, 1] with v up -> [N, C].

    Texel ``(r, c)`` has its center at ``u = (c + 0.5) / Wt``, ``v = 1 - (r + 0.5) / Ht``; lookups outside
    the texel centers clamp to the border texels."""
    grid = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], dim=-1).view(1, 1, -1, 2)
    image = texture.permute(2, 0, 1)[None].to(uv.dtype)  # [1, C, Ht, Wt]
    sampled = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)
    return sampled[0, :, 0, :].t()


def surface_albedo(mesh: MeshTensors, face: Tensor, bary: Tensor, points: Tensor) -> Tensor:
    """Albedo [N, 3] at surface points given by face ids [N], barycentrics [N, 3] and world points [N, 3]."""
    if mesh.texture is not None:
        if mesh.uv is None:
            raise ConfigError("a mesh with a texture needs uv coordinates")
        uv_faces = mesh.uv_faces if mesh.uv_faces is not None else mesh.faces
        uv = (bary[..., None] * mesh.uv[uv_faces[face]]).sum(1)  # [N, 2]
        return sample_texture(mesh.texture, uv)
    if mesh.vertex_colors is not None:
        return (bary[..., None] * mesh.vertex_colors[mesh.faces[face]]).sum(1)
    if mesh.color_fn is not None:
        return mesh.color_fn(points)
    return torch.ones_like(points)


def render_mesh(mesh: MeshTensors, cameras: Cameras, height: int, width: int, *,
                background: Callable[[Tensor], Tensor], shading: str = "albedo",
                light_positions: Tensor | None = None, antialias: bool = True, backend: str = "auto",
                near: float = 1e-6) -> RenderOut:
    """Render ``cameras`` ([B] views) of a triangle mesh at ``height`` x ``width`` (see the module docstring).

    Args:
        mesh: the triangles and their appearance (:func:`mesh_tensors_from_trimesh` makes them from a
            trimesh mesh; a :class:`~dreamengine.scenes.mesh.MeshScene` hands them over as ``render_inputs()``).
        background: called on the ray directions [B, H, W, 3] for the color behind the mesh
            (:class:`~dreamengine.core.background.Background`).
        shading: 'albedo' | 'diffuse' | 'textureless'; the last two need ``light_positions`` [B, 3].
        antialias: blend silhouette pixels (fractional opacity and gradients to silhouette vertices).
        backend: 'auto' | 'torch' | 'cuda' (nvdiffrast; 'auto' uses it on CUDA when it imports).
    Returns:
        :class:`~dreamengine.core.render.RenderOut` (``orientation_loss`` is None).
    """
    if shading not in SHADINGS:
        raise ConfigError(f"shading must be one of {SHADINGS}, got {shading!r}")
    if shading != "albedo" and light_positions is None:
        raise ConfigError(f"shading {shading!r} needs light_positions [B, 3] (see sample_light_positions)")
    if not isinstance(mesh, MeshTensors):
        raise ConfigError(f"render_mesh draws MeshTensors, got {type(mesh).__name__}: convert a trimesh mesh with "
                          "mesh_tensors_from_trimesh, pass a MeshScene's render_inputs()")
    cameras = _cameras_like(cameras, mesh.vertices)
    if resolve_backend(backend, mesh.device) == "cuda":
        return _render_nvdiffrast(mesh, cameras, height, width, background, shading, light_positions, antialias)

    batch = len(cameras)
    _, directions = cameras.rays(height, width)
    bg = background(directions).to(mesh.vertices.dtype)  # [B, H, W, 3]
    fragments = rasterize_mesh(mesh, cameras, height, width, near=near)
    flat_face = fragments.face_id.reshape(-1)
    pixel = (flat_face >= 0).nonzero().squeeze(-1)  # covered pixels, flat over [B, H, W]
    face = flat_face[pixel]
    view = pixel // (height * width)
    py = (pixel // width) % height
    px = pixel % width

    # Differentiable, perspective-correct barycentrics of each covered pixel in its face.
    vertices = mesh.vertices
    xy, w = project(vertices, cameras, height, width)  # [B, V, 2], [B, V]
    corner = mesh.faces[face]  # [N, 3]
    tri_xy = xy[view[:, None], corner]  # [N, 3, 2]
    screen, _ = screen_barycentrics(tri_xy, px.to(xy.dtype) + 0.5, py.to(xy.dtype) + 0.5)
    weighted = screen / w[view[:, None], corner]
    bary = weighted / weighted.sum(-1, keepdim=True)  # [N, 3]
    points = (bary[..., None] * vertices[corner]).sum(1)  # [N, 3] world surface points
    distance = (points - cameras.position[view]).norm(dim=-1, keepdim=True)  # along the pixel's ray

    normals = vertex_normals(vertices, mesh.faces)
    pixel_normals = torch.nn.functional.normalize((bary[..., None] * normals[corner]).sum(1), dim=-1, eps=1e-20)
    albedo = surface_albedo(mesh, face, bary, points)
    lights = light_positions[view].to(points.dtype) if light_positions is not None else None
    colors = shade(albedo, pixel_normals, points, lights, shading)

    num_pixels = batch * height * width
    dtype = vertices.dtype
    rgb = bg.reshape(num_pixels, 3).index_put((pixel,), colors.to(dtype))
    opacity = torch.zeros(num_pixels, 1, dtype=dtype, device=mesh.device).index_put(
        (pixel,), torch.ones(pixel.shape[0], 1, dtype=dtype, device=mesh.device))
    depth = torch.zeros(num_pixels, 1, dtype=dtype, device=mesh.device).index_put((pixel,), distance)
    normal = torch.zeros(num_pixels, 3, dtype=dtype, device=mesh.device).index_put((pixel,), pixel_normals)
    image = torch.cat([rgb, opacity, depth, normal], dim=-1).view(batch, height, width, 8)
    if antialias:
        neighbors = mesh.neighbors if mesh.neighbors is not None else face_neighbors(vertices, mesh.faces)
        image = antialias_silhouettes(image, fragments, xy, mesh.faces, neighbors)
    return RenderOut(rgb=image[..., 0:3], opacity=image[..., 3:4], depth=image[..., 4:5], normal=image[..., 5:8],
                     orientation_loss=None)


def antialias_silhouettes(image: Tensor, fragments: Fragments, xy: Tensor, faces: Tensor, neighbors: Tensor,
                          max_walk: int = 16) -> Tensor:
    """Blend pixels across silhouette edges (step 5 of the module docstring).

    Args:
        image: [B, H, W, C] shaded, composited channels (differentiable).
        fragments: the raster of ``image``.
        xy: [B, V, 2] projected vertices (differentiable: silhouette gradients flow into it).
        faces: [F, 3]; neighbors: [F, 3] from :func:`face_neighbors`.
        max_walk: faces the segment may cross, through non-silhouette edges, before reaching the silhouette.
    Returns:
        [B, H, W, C].
    """
    batch, height, width, channels = image.shape
    face_id, zdepth = fragments.face_id, fragments.zdepth
    with torch.no_grad():
        tri = xy.detach()[:, faces]  # [B, F, 3, 2]
        ex, ey = tri[..., 0], tri[..., 1]
        facing = ((ex[..., 1] - ex[..., 0]) * (ey[..., 2] - ey[..., 0])
                  - (ey[..., 1] - ey[..., 0]) * (ex[..., 2] - ex[..., 0])) > 0  # [B, F]
    flat = image.reshape(-1, channels)
    delta = torch.zeros_like(flat)
    for axis in (1, 0):  # 1: horizontal pairs (x varies), 0: vertical pairs (y varies)
        if axis == 1:
            fa, fb, za, zb = face_id[:, :, :-1], face_id[:, :, 1:], zdepth[:, :, :-1], zdepth[:, :, 1:]
        else:
            fa, fb, za, zb = face_id[:, :-1, :], face_id[:, 1:, :], zdepth[:, :-1, :], zdepth[:, 1:, :]
        candidate = (fa != fb) & ((fa >= 0) | (fb >= 0))
        b_idx, i_idx, j_idx = candidate.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            continue
        from_a = ((fa >= 0) & (za <= zb))[b_idx, i_idx, j_idx]  # the nearer face occludes
        step_i, step_j = (0, 1) if axis == 1 else (1, 0)
        occ_i, occ_j = torch.where(from_a, i_idx, i_idx + step_i), torch.where(from_a, j_idx, j_idx + step_j)
        far_i, far_j = torch.where(from_a, i_idx + step_i, i_idx), torch.where(from_a, j_idx + step_j, j_idx)
        sign = torch.where(from_a, 1.0, -1.0).to(xy.dtype)
        occluder = face_id[b_idx, occ_i, occ_j]
        center = torch.stack([occ_j, occ_i], dim=-1).to(xy.dtype) + 0.5  # (x, y) of the occluder's pixel
        with torch.no_grad():
            found, edge_face, edge = _walk_to_silhouette(tri, facing, neighbors, b_idx, occluder, center, sign,
                                                         axis, max_walk)
        if not found.any():
            continue
        b_idx, center, sign = b_idx[found], center[found], sign[found]
        edge_face, edge = edge_face[found], edge[found]
        occ_pixel = (b_idx * height + occ_i[found]) * width + occ_j[found]
        far_pixel = (b_idx * height + far_i[found]) * width + far_j[found]
        corners = faces[edge_face]  # [M, 3]
        start = xy[b_idx, corners.gather(1, edge[:, None]).squeeze(1)]  # [M, 2] differentiable
        end = xy[b_idx, corners.gather(1, ((edge + 1) % 3)[:, None]).squeeze(1)]
        t = _crossing(start, end, center, sign, axis)  # [M] differentiable
        occ_value, far_value = flat[occ_pixel], flat[far_pixel]
        toward_far = (t - 0.5).clamp(min=0.0)[:, None]  # the occluder spills into the far pixel
        toward_occ = (0.5 - t).clamp(min=0.0)[:, None]  # the far side shows in the occluder's pixel
        delta = delta.index_add(0, far_pixel, toward_far * (occ_value - far_value))
        delta = delta.index_add(0, occ_pixel, toward_occ * (far_value - occ_value))
    return (flat + delta).view(batch, height, width, channels)


def _walk_to_silhouette(tri: Tensor, facing: Tensor, neighbors: Tensor, b_idx: Tensor, start_face: Tensor,
                        center: Tensor, sign: Tensor, axis: int, max_walk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Follow the axis-aligned segment from each occluder pixel's center (inside ``start_face``) towards the
    neighbor pixel's center, face by face across non-silhouette edges, until it leaves the surface through
    a silhouette edge at ``t <= 1``.

    Near a contour the faces are foreshortened to slivers, so the face under the pixel center is often
    not the one that owns the silhouette edge; walking over ``max_walk`` faces finds it.

    Returns:
        found [M] bool, and for the found ones the face [M] and edge index [M] (0..2) of the silhouette edge.
    """
    count = b_idx.shape[0]
    device = b_idx.device
    current, previous = start_face.clone(), torch.full_like(start_face, -1)
    t_previous = torch.zeros(count, dtype=tri.dtype, device=device)
    active = torch.ones(count, dtype=torch.bool, device=device)
    found = torch.zeros(count, dtype=torch.bool, device=device)
    edge_face, edge_index = torch.zeros_like(start_face), torch.zeros_like(start_face)
    for _ in range(max_walk):
        rows = active.nonzero().squeeze(-1)
        if rows.numel() == 0:
            break
        face, b = current[rows], b_idx[rows]
        entry = neighbors[face] == previous[rows, None]  # [R, 3] the edge we came in through
        t, edge = _segment_exit(tri[b, face], center[rows], sign[rows], axis, t_previous[rows], entry)
        across = neighbors[face, edge.clamp(min=0)]
        silhouette = (across < 0) | (facing[b, across.clamp(min=0)] != facing[b, face])
        crossed = (edge >= 0) & (t <= 1.0)
        # Each silhouette edge is handled by one pair direction only, as in nvdiffrast: horizontal pairs
        # take the edges steeper than 45 degrees, vertical pairs the others (both would count it twice).
        corners = tri[b, face]  # [R, 3, 2]
        direction = corners.gather(1, ((edge.clamp(min=0) + 1) % 3)[:, None, None].expand(-1, 1, 2)).squeeze(1) \
            - corners.gather(1, edge.clamp(min=0)[:, None, None].expand(-1, 1, 2)).squeeze(1)
        along, across_axis = (0, 1) if axis == 1 else (1, 0)
        rise, run = direction[:, across_axis].abs(), direction[:, along].abs()
        mine = rise >= run if axis == 1 else rise > run  # the edge crosses the segment's direction steeply
        hit = crossed & silhouette & mine
        found[rows[hit]] = True
        edge_face[rows[hit]], edge_index[rows[hit]] = face[hit], edge[hit]
        walk = crossed & ~silhouette
        active[rows] = walk
        previous[rows[walk]], current[rows[walk]] = face[walk], across[walk]
        t_previous[rows[walk]] = t[walk]
    return found, edge_face, edge_index


def _crossing(start: Tensor, end: Tensor, center: Tensor, sign: Tensor, axis: int) -> Tensor:
    """Where the ray ``center + t * sign * e_axis`` (axis 1: x, 0: y) meets the line through ``start`` and
    ``end`` [M, 2]: returns t [M] (differentiable in the end points)."""
    along, across = (0, 1) if axis == 1 else (1, 0)  # coordinate indices in (x, y)
    denominator = end[:, across] - start[:, across]
    safe = torch.where(denominator.abs() > 1e-12, denominator, torch.full_like(denominator, 1e-12))
    s = (center[:, across] - start[:, across]) / safe
    hit = start[:, along] + s * (end[:, along] - start[:, along])
    return sign * (hit - center[:, along])


def _segment_exit(tri: Tensor, center: Tensor, sign: Tensor, axis: int, t_min: Tensor,
                  excluded: Tensor) -> tuple[Tensor, Tensor]:
    """Where the axis-aligned ray from ``center`` [M, 2] leaves triangle ``tri`` [M, 3, 2] after ``t_min`` [M],
    ignoring the edges marked in ``excluded`` [M, 3] (the entry edge): (t [M], edge index [M] in 0..2, or -1
    where no edge is crossed)."""
    along, across = (0, 1) if axis == 1 else (1, 0)
    ts = []
    for k in range(3):
        start, end = tri[:, k], tri[:, (k + 1) % 3]
        denominator = end[:, across] - start[:, across]
        s = (center[:, across] - start[:, across]) / torch.where(denominator == 0, torch.ones_like(denominator),
                                                                  denominator)
        t = _crossing(start, end, center, sign, axis)
        valid = (denominator != 0) & (s >= 0) & (s <= 1) & (t >= t_min) & ~excluded[:, k]
        ts.append(torch.where(valid, t, torch.full_like(t, float("inf"))))
    t, edge = torch.stack(ts, dim=-1).min(dim=-1)
    return t, torch.where(torch.isfinite(t), edge, torch.full_like(edge, -1))


# ---------------------------------------------------------------------------------------------------
# nvdiffrast (CUDA)


def projection_matrices(cameras: Cameras, height: int, width: int, near: float = 0.01,
                        far: float = 100.0) -> Tensor:
    """OpenGL world -> clip matrices [B, 4, 4] matching :func:`project`, with y negated so that nvdiffrast's
    first image row is the top of the image (its row 0 is clip y = -1)."""
    focal = cameras.focal(height)
    proj = torch.zeros(len(cameras), 4, 4, dtype=cameras.c2w.dtype, device=cameras.device)
    proj[:, 0, 0] = 2.0 * focal / width
    proj[:, 1, 1] = -2.0 * focal / height
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj @ torch.linalg.inv(cameras.c2w)


def _render_nvdiffrast(mesh: MeshTensors, cameras: Cameras, height: int, width: int,
                       background: Callable[[Tensor], Tensor], shading: str, light_positions: Tensor | None,
                       antialias: bool) -> RenderOut:
    """:func:`render_mesh` with nvdiffrast (CUDA only; same outputs as the torch path)."""
    dr = optional_import("nvdiffrast.torch")
    device = mesh.device
    if device not in _NVDIFFRAST_CONTEXTS:
        _NVDIFFRAST_CONTEXTS[device] = dr.RasterizeCudaContext(device=device)
    context = _NVDIFFRAST_CONTEXTS[device]
    batch = len(cameras)
    vertices = mesh.vertices
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)  # [V, 4]
    clip = torch.einsum("bij,vj->bvi", projection_matrices(cameras, height, width).to(vertices.dtype),
                        homogeneous).contiguous()
    tri = mesh.faces.int().contiguous()
    rast, _ = dr.rasterize(context, clip, tri, resolution=(height, width))  # [B, H, W, 4]
    covered = rast[..., 3:] > 0
    points, _ = dr.interpolate(vertices[None].contiguous(), rast, tri)  # [B, H, W, 3]
    normals, _ = dr.interpolate(vertex_normals(vertices, mesh.faces)[None].contiguous(), rast, tri)
    normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-20)
    if mesh.texture is not None:
        uv_faces = (mesh.uv_faces if mesh.uv_faces is not None else mesh.faces).int().contiguous()
        uv, _ = dr.interpolate(mesh.uv[None].contiguous(), rast, uv_faces)
        uv = torch.stack([uv[..., 0], 1.0 - uv[..., 1]], dim=-1)  # nvdiffrast: v = 0 is texture row 0
        albedo = dr.texture(mesh.texture[None].contiguous(), uv.contiguous(), filter_mode="linear",
                            boundary_mode="clamp")
    elif mesh.vertex_colors is not None:
        albedo, _ = dr.interpolate(mesh.vertex_colors[None].contiguous(), rast, tri)
    elif mesh.color_fn is not None:
        flat_points = points.reshape(-1, 3)
        index = covered.reshape(-1).nonzero().squeeze(-1)
        albedo = torch.zeros_like(flat_points).index_put((index,), mesh.color_fn(flat_points[index]))
        albedo = albedo.view(batch, height, width, 3)
    else:
        albedo = torch.ones_like(points)
    lights = None
    if light_positions is not None:
        lights = light_positions.view(batch, 1, 1, 3).expand(batch, height, width, 3).reshape(-1, 3)
    colors = shade(albedo.reshape(-1, 3), normals.reshape(-1, 3), points.reshape(-1, 3), lights, shading)
    colors = colors.view(batch, height, width, 3)
    _, directions = cameras.rays(height, width)
    mask = covered.to(vertices.dtype)
    distance = (points - cameras.position.view(batch, 1, 1, 3)).norm(dim=-1, keepdim=True)
    rgb = torch.where(covered, colors, background(directions).to(vertices.dtype))
    image = torch.cat([rgb, mask, distance * mask, normals * mask], dim=-1)
    if antialias:
        image = dr.antialias(image.contiguous(), rast, clip, tri)
    return RenderOut(rgb=image[..., 0:3], opacity=image[..., 3:4], depth=image[..., 4:5], normal=image[..., 5:8],
                     orientation_loss=None)


class RasterRenderer:
    """Renders a mesh scene with a run's render settings (``RenderConfig``): the trainer's renderer object for
    ``scene.name: mesh`` (the protocol: :class:`~dreamengine.core.protocols.Renderer`). Lights for
    'diffuse' / 'textureless' shading are drawn from ``generator`` as for NeRFs; its only state is the albedo
    warm-up's step count (``render.albedo_warmup_steps``, see :class:`~dreamengine.renderers.volume.AlbedoWarmup`)."""

    def __init__(self, cfg: Any, radius: float, device: torch.device) -> None:
        """``radius`` (the scene's bound) is unused: rasterization needs no bound."""
        if cfg.shading not in SHADINGS:
            raise ConfigError(f"render.shading must be one of {', '.join(SHADINGS)}; got {cfg.shading!r}")
        resolve_backend(cfg.backend, device)  # fail early on backend=cuda without nvdiffrast or a GPU
        self.cfg = cfg
        self.warmup = AlbedoWarmup(cfg.shading, cfg.albedo_warmup_steps)

    def __call__(self, mesh: MeshTensors, background: Callable[[Tensor], Tensor], cameras: Cameras, height: int,
                 width: int, *, generator: torch.Generator | None = None, perturb: bool = False) -> RenderOut:
        """Render ``cameras`` [B] at ``height`` x ``width`` (``perturb`` is unused: rasterization has no samples)."""
        shading = self.warmup.shading  # 'albedo' during the albedo warm-up
        light = None
        if shading != "albedo":
            light = sample_light_positions(cameras, generator).to(cameras.device)
        return render_mesh(mesh, cameras, height, width, background=background, shading=shading,
                           light_positions=light, backend=self.cfg.backend)

    def after_step(self, mesh: MeshTensors, step: int) -> None:
        """Count the step (the albedo warm-up); nothing to refresh."""
        self.warmup.after_step(step)

    def after_training(self, mesh: MeshTensors) -> None:
        """Nothing to ready: rasterization keeps no scene-dependent state."""

    def state_dict(self) -> dict[str, Any]:
        return self.warmup.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup.load_state_dict(state)


__all__ = ["Fragments", "RasterRenderer", "antialias_silhouettes", "face_neighbors", "mesh_tensors_from_trimesh",
           "project", "projection_matrices", "rasterize_mesh", "rasterize_triangles", "render_mesh", "resolve_backend",
           "sample_texture", "screen_barycentrics", "surface_albedo", "vertex_normals", "world_to_camera"]
