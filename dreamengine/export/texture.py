"""Textured meshes: xatlas UV atlases, texture baking from a color field, seam padding, PBR materials.

Conventions (trimesh's and OBJ's): a texture is an image array ``[H, W, C]`` whose row 0 is the **top** of
the image, and UV coordinates have ``(0, 0)`` at the image's bottom-left, so texel ``(r, c)`` has its center
at ``u = (c + 0.5) / W``, ``v = 1 - (r + 0.5) / H``. trimesh flips ``v`` when it writes glTF (whose origin is
the top-left), so files come out right; :func:`dreamengine.renderers.raster.sample_texture` reads the
same convention.

Baking, for a mesh with an atlas:

1. rasterize every face's UV triangle into texel space (:func:`~dreamengine.renderers.raster.rasterize_triangles`
   with unit depth): a texel is covered when its center lies in a UV triangle, which gives its face and
   barycentrics;
2. the texel's surface point is the same barycentric combination of the face's 3D vertices; the color field
   (``albedo_fn(points [N, 3]) -> [N, 3]``, the scene's albedo) is evaluated there;
3. **seam padding**: every texel that no triangle covers takes the color of the nearest covered texel
   (a Euclidean distance transform), so bilinear filtering and mipmapping at chart borders blend in
   colors of the same surface instead of a background color.

xatlas packs the charts with ``padding`` empty texels between them (and room for bilinear filtering). It
scales the atlas to about ``resolution`` texels; the resulting width and height differ in general, and
its UVs are normalized by each, so the square texture stretches the atlas a little along one axis. Charts
do not overlap either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
import xatlas
from PIL import Image
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from dreamengine.errors import ExportError
from dreamengine.export.marching import field_device
from dreamengine.renderers.raster import rasterize_triangles

FieldFn = Callable[[Tensor], Tensor]  # world points [N, 3] -> values [N, C]


@dataclass
class UVAtlas:
    """A UV parametrization of a mesh with V vertices and F faces. xatlas splits vertices along chart seams,
    so the atlas has its own T >= V vertices."""

    vmapping: np.ndarray  # [T] int64, the mesh vertex of each atlas vertex
    faces: np.ndarray  # [F, 3] int64, faces over the atlas vertices (same order as the mesh's faces)
    uv: np.ndarray  # [T, 2] float32 in [0, 1], v up
    charts: int  # number of charts


def unwrap_uv(mesh: trimesh.Trimesh, resolution: int = 1024, padding: int = 4,
              pieces: int | None = None) -> UVAtlas:
    """xatlas charts and packing for ``mesh``.

    The faces are cut into ``pieces`` spatially compact pieces (:func:`spatial_pieces`), each given to xatlas as
    its own mesh: xatlas computes the charts of its meshes in parallel (its own threads) and packs all the charts
    into one atlas. Chart finding costs more than linearly in the faces, so pieces save time on one core too:
    a 20000-face marching-cubes cube unwraps in 6.0 s whole, 2.8 s in 2 pieces and 1.6 s in 4 on 2 cores
    (the quickstart's export: UVs 7.5 -> 1.6 s in bench/results/fixed_cost_quickstart.md). A piece's boundary is
    a chart boundary (a seam); the bake samples the same surface on both sides of it, so the texture is continuous
    there.

    Args:
        resolution: texture size the charts are packed for (texels per side).
        padding: empty texels between charts.
        pieces: how many pieces (None: one per 5000 faces, a power of two, at most 8).
    """
    if len(mesh.faces) == 0:
        raise ExportError("cannot unwrap an empty mesh (it has no faces)")
    if resolution < 16 or padding < 0:
        raise ExportError(f"texture resolution must be >= 16 and padding >= 0, got {resolution}, {padding}")
    faces = np.asarray(mesh.faces, dtype=np.int64)
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    groups = spatial_pieces(np.asarray(mesh.triangles_center), default_pieces(len(faces)) if pieces is None
                            else pieces)
    atlas = xatlas.Atlas()
    piece_vertices = []  # per piece: the mesh vertex of each of its vertices
    for group in groups:
        used, local_faces = np.unique(faces[group], return_inverse=True)
        piece_vertices.append(used)
        atlas.add_mesh(np.ascontiguousarray(vertices[used]),
                       np.ascontiguousarray(local_faces.reshape(-1, 3), dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(resolution)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise ExportError(f"xatlas packed the charts into {atlas.atlas_count} textures instead of one; lower the "
                          "face count (export.target_faces) or raise export.texture_size")
    vmapping, uv, atlas_faces, start = [], [], np.empty_like(faces), 0
    for index, (group, used) in enumerate(zip(groups, piece_vertices, strict=True)):
        piece_vmapping, piece_faces, piece_uv = atlas[index]
        vmapping.append(used[piece_vmapping.astype(np.int64)])
        uv.append(piece_uv)
        atlas_faces[group] = piece_faces.astype(np.int64) + start
        start += len(piece_vmapping)
    return UVAtlas(vmapping=np.concatenate(vmapping), faces=atlas_faces,
                   uv=np.clip(np.concatenate(uv).astype(np.float32), 0.0, 1.0), charts=int(atlas.chart_count))


def default_pieces(face_count: int) -> int:
    """Pieces :func:`unwrap_uv` cuts a mesh of ``face_count`` faces into: one per 5000 faces, rounded down to a
    power of two, 1 to 8."""
    wanted = min(8, max(1, face_count // 5000))
    return 1 << (wanted.bit_length() - 1)


def spatial_pieces(centers: np.ndarray, pieces: int) -> list[np.ndarray]:
    """Face indices of ``pieces`` compact pieces of a mesh with face centers [F, 3]: recursive halving at the
    median along the longest side of each piece's bounding box, so the pieces have equal face counts (the first
    ones split further when ``pieces`` is not a power of two)."""
    if pieces < 1:
        raise ExportError(f"a mesh is unwrapped in at least 1 piece, got {pieces}")
    groups = [np.arange(len(centers))]
    while len(groups) < min(pieces, len(centers)):
        group = groups.pop(0)
        axis = int(np.argmax(np.ptp(centers[group], axis=0)))
        order = group[np.argsort(centers[group, axis], kind="stable")]
        groups += [order[: len(order) // 2], order[len(order) // 2:]]
    return [np.sort(group) for group in groups]


@dataclass
class TexelSamples:
    """The texels covered by the UV triangles of a mesh and where they lie on its surface."""

    mask: np.ndarray  # [H, W] bool, covered texels
    rows: np.ndarray  # [N] row of each covered texel
    cols: np.ndarray  # [N]
    faces: np.ndarray  # [N] the face covering it
    barycentrics: np.ndarray  # [N, 3] float64, in that face
    points: np.ndarray  # [N, 3] float64, the surface point


def texel_samples(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, uv_faces: np.ndarray,
                  size: int | tuple[int, int]) -> TexelSamples:
    """Rasterize the UV triangles ``uv[uv_faces]`` into a ``size`` texture and map covered texels to 3D.

    Args:
        vertices: [V, 3]; faces: [F, 3] into ``vertices``.
        uv: [T, 2]; uv_faces: [F, 3] into ``uv`` (face ``f`` in UV space is face ``f`` in 3D).
        size: texels per side, or (height, width).
    """
    height, width = (size, size) if isinstance(size, int) else size
    uv_t = torch.as_tensor(np.asarray(uv, dtype=np.float64))
    texel_xy = torch.stack([uv_t[:, 0] * width, (1.0 - uv_t[:, 1]) * height], dim=-1)  # pixel coordinates
    tri_xy = texel_xy[torch.as_tensor(uv_faces)][None]  # [1, F, 3, 2]
    fragments = rasterize_triangles(tri_xy, torch.ones(tri_xy.shape[:3], dtype=torch.float64), height, width)
    face_id = fragments.face_id[0].numpy()
    mask = face_id >= 0
    rows, cols = np.nonzero(mask)
    face = face_id[rows, cols]
    # Barycentrics of the texel centers in the UV triangles (affine: no perspective in texture space).
    tri = texel_xy.numpy()[np.asarray(uv_faces)[face]]  # [N, 3, 2]
    centers = np.stack([cols + 0.5, rows + 0.5], axis=-1)
    bary = _barycentrics_2d(tri, centers)
    points = np.einsum("nk,nkc->nc", bary, np.asarray(vertices, dtype=np.float64)[np.asarray(faces)[face]])
    return TexelSamples(mask=mask, rows=rows, cols=cols, faces=face, barycentrics=bary, points=points)


def _barycentrics_2d(tri: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Barycentrics [N, 3] of 2D points [N, 2] in triangles [N, 3, 2], clipped to the triangle (>= 0)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    denominator = d00 * d11 - d01 * d01
    denominator = np.where(np.abs(denominator) > 1e-30, denominator, 1e-30)
    w1 = (d11 * d20 - d01 * d21) / denominator
    w2 = (d00 * d21 - d01 * d20) / denominator
    bary = np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=-1), 0.0, None)
    return bary / bary.sum(-1, keepdims=True)


def spatial_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """A permutation [N] that sorts points [N, 3] along a Morton (Z-order) curve over their bounding box, so
    that consecutive points are close in space."""
    low = points.min(axis=0)
    extent = max(float((points.max(axis=0) - low).max()), 1e-12)
    cells = ((points - low) / extent * (2**bits - 1)).astype(np.uint64)
    code = np.zeros(len(points), dtype=np.uint64)
    for bit in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


@torch.no_grad()
def evaluate_field(field_fn: FieldFn, points: np.ndarray, channels: int, chunk: int = 65536,
                   device: torch.device | None = None) -> np.ndarray:
    """``field_fn`` at points [N, 3] in chunks -> float32 [N, channels], NaN -> 0, clipped to [0, 1].

    Points are evaluated in Z-order (:func:`spatial_order`), so each chunk covers a compact region: fields
    that cull by region (a Gaussian scene's albedo) then touch few primitives per chunk."""
    device = field_device(field_fn) if device is None else device
    if len(points) == 0:
        return np.zeros((0, channels), dtype=np.float32)
    order = spatial_order(points)
    ordered = np.asarray(points)[order]
    out = np.empty((len(points), channels), dtype=np.float32)
    for start in range(0, len(points), chunk):
        part = torch.as_tensor(ordered[start:start + chunk], dtype=torch.float32, device=device)
        values = field_fn(part)
        values = values.reshape(values.shape[0], -1)
        if values.shape != (part.shape[0], channels):
            raise ExportError(f"a field returned shape {tuple(values.shape)} for {part.shape[0]} points; it must map "
                              f"[N, 3] points to [N, {channels}] values")
        out[order[start:start + chunk]] = values.float().cpu().numpy()
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def fill_empty_texels(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Seam padding: every texel outside ``mask`` [H, W] takes the value of the nearest texel inside it.

    Args:
        image: [H, W, C]; values outside the mask are ignored.
    Returns:
        A new [H, W, C] array (``image`` itself when the mask is full).
    """
    if mask.all():
        return image
    if not mask.any():
        raise ExportError("no texel is covered by the mesh's UV triangles; the atlas is empty")
    _, (rows, cols) = distance_transform_edt(~mask, return_indices=True)
    return image[rows, cols]


def bake_field(samples: TexelSamples, field_fn: FieldFn, channels: int = 3, chunk: int = 65536,
               device: torch.device | None = None) -> np.ndarray:
    """A texture [H, W, channels] in [0, 1] of ``field_fn`` at the texels' surface points, seam-padded."""
    values = evaluate_field(field_fn, samples.points, channels, chunk, device)
    image = np.zeros((*samples.mask.shape, channels), dtype=np.float32)
    image[samples.rows, samples.cols] = values
    return fill_empty_texels(image, samples.mask)


def bake_vertex_values(samples: TexelSamples, faces: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A texture [H, W, C] of per-vertex ``values`` [V, C] interpolated at the texels, seam-padded."""
    values = np.asarray(values, dtype=np.float32)
    interpolated = np.einsum("nk,nkc->nc", samples.barycentrics, values[np.asarray(faces)[samples.faces]])
    image = np.zeros((*samples.mask.shape, values.shape[1]), dtype=np.float32)
    image[samples.rows, samples.cols] = interpolated
    return fill_empty_texels(image, samples.mask)


def to_image(texture: np.ndarray) -> Image.Image:
    """A float texture [H, W, C] in [0, 1] (C = 1 or 3) as an 8-bit PIL image (row 0 at the top)."""
    pixels = np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def textured_mesh(mesh: trimesh.Trimesh, atlas: UVAtlas, base_color: np.ndarray,
                  metallic_roughness: np.ndarray | None = None, metallic: float = 0.0,
                  roughness: float = 1.0, name: str = "dreamengine_pbr") -> trimesh.Trimesh:
    """A copy of ``mesh`` split along the atlas seams, with UVs and a glTF metallic-roughness material.

    Args:
        base_color: [H, W, 3] in [0, 1] (the albedo texture).
        metallic_roughness: [H, W, 2] (metallic, roughness) in [0, 1], or None for the constant ``metallic``
            and ``roughness`` factors. With maps, both factors are 1 and the texture holds the values
            (glTF packs roughness in green and metallic in blue).
    """
    vertices = np.asarray(mesh.vertices)[atlas.vmapping]
    split = trimesh.Trimesh(vertices=vertices, faces=atlas.faces, process=False)
    kwargs = {"metallicFactor": float(metallic), "roughnessFactor": float(roughness)}
    if metallic_roughness is not None:
        packed = np.zeros((*metallic_roughness.shape[:2], 3), dtype=np.float32)
        packed[..., 1] = metallic_roughness[..., 1]  # green: roughness
        packed[..., 2] = metallic_roughness[..., 0]  # blue: metallic
        kwargs = {"metallicFactor": 1.0, "roughnessFactor": 1.0, "metallicRoughnessTexture": to_image(packed)}
    material = trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=to_image(base_color),
                                                   baseColorFactor=[255, 255, 255, 255], **kwargs)
    split.visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=material)
    return split


def texture_mesh(mesh: trimesh.Trimesh, albedo_fn: FieldFn, size: int = 1024, padding: int = 4,
                 roughness_fn: FieldFn | None = None, metallic_fn: FieldFn | None = None,
                 metallic: float = 0.0, roughness: float = 1.0, atlas: UVAtlas | None = None,
                 chunk: int = 65536) -> trimesh.Trimesh:
    """UV-unwrap ``mesh`` (unless an ``atlas`` is given) and bake ``albedo_fn`` (and the optional roughness /
    metallic fields, [N, 3] -> [N] or [N, 1]) into ``size`` x ``size`` textures; see :func:`textured_mesh`.

    A scene without roughness / metallic fields gets the constant factors ``roughness`` and ``metallic``.
    """
    atlas = atlas if atlas is not None else unwrap_uv(mesh, size, padding)
    samples = texel_samples(np.asarray(mesh.vertices), np.asarray(mesh.faces), atlas.uv, atlas.faces, size)
    base_color = bake_field(samples, albedo_fn, 3, chunk)
    metallic_roughness = None
    if roughness_fn is not None or metallic_fn is not None:
        metallic_map = (bake_field(samples, metallic_fn, 1, chunk) if metallic_fn is not None
                        else np.full((size, size, 1), metallic, dtype=np.float32))
        roughness_map = (bake_field(samples, roughness_fn, 1, chunk) if roughness_fn is not None
                         else np.full((size, size, 1), roughness, dtype=np.float32))
        metallic_roughness = np.concatenate([metallic_map, roughness_map], axis=-1)
    return textured_mesh(mesh, atlas, base_color, metallic_roughness, metallic, roughness)


__all__ = ["TexelSamples", "UVAtlas", "bake_field", "bake_vertex_values", "evaluate_field", "fill_empty_texels",
           "texel_samples", "texture_mesh", "textured_mesh", "to_image", "unwrap_uv"]
