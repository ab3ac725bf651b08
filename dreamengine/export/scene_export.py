"""A trained scene -> a cleaned, textured (or vertex-colored) mesh file.

Field scenes (NeRF and Gaussian scenes: ``radius``, ``density(points)``, ``density_grid(resolution)`` and
``export_albedo(resolution)``, see :class:`ExportField`) go through marching cubes: the surface is the density
level set ``density == threshold``. With ``export.threshold: null`` (the default) the level is chosen from the
renders themselves: :func:`silhouette_threshold` picks the level whose silhouettes best match where the
rendered opacity exceeds 0.5, so the mesh covers what the renders show rather than only their dense core; then
:func:`stable_topology_level` lowers that level, where needed, into a range of levels over which the solid's
topology holds (a level inside the interior's own density range cuts it into a foam of handles). Then pymeshlab
cleanup, and either xatlas UVs + a baked albedo texture (``export.appearance: texture``, GLB and
OBJ) or vertex colors (``vertex_colors``, and always for PLY). A scene with ``roughness(points)`` /
``metallic(points)`` fields gets those baked too; otherwise the material has the constant ``export.roughness``
/ ``export.metallic`` factors.

Mesh scenes (:class:`~dreamengine.scenes.mesh.MeshScene`, recognized by their ``export_mesh`` method) are
already triangles: they write their own mesh and texture.

Files are scaled so the longest side of the mesh's bounding box is ``export.size`` meters (0 keeps scene
units); the scale is recorded in the file and :func:`~dreamengine.export.load_mesh` undoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import trimesh
from scipy import ndimage
from skimage.measure import euler_number
from torch import Tensor

from dreamengine.config.run import ExportConfig
from dreamengine.core.cameras import Cameras, cameras_from_spherical
from dreamengine.errors import ExportError
from dreamengine.export.cleanup import clean_mesh
from dreamengine.export.color import color_vertices
from dreamengine.export.marching import mesh_from_volume
from dreamengine.export.mesh_io import save_mesh
from dreamengine.export.texture import texture_mesh, unwrap_uv
from dreamengine.renderers.volume import intersect_sphere


class ExportField(Protocol):
    """What marching-cubes export needs from a scene (NeRFScene and GaussianScene are ExportFields)."""

    radius: float

    def density(self, points: Tensor) -> Tensor:
        """[N, 3] -> [N]."""
        ...

    def density_grid(self, resolution: int) -> np.ndarray:
        """The density on the ``resolution^3`` grid over ``[-radius, radius]^3``, [R, R, R]."""
        ...

    def export_albedo(self, resolution: int) -> Callable[[Tensor], Tensor]:
        """A function points [N, 3] -> albedo [N, 3] for baking (``resolution``: the export grid's)."""
        ...

    def parameters(self) -> Any: ...


def volume_interpolator(volume: np.ndarray, radius: float) -> Callable[[Tensor], Tensor]:
    """A trilinear interpolator (points [N, 3] -> [N]) of a density grid [R, R, R] over ``[-radius, radius]^3``
    laid out as :func:`~dreamengine.export.marching.sample_density_grid` returns it."""
    resolution = volume.shape[0]
    grid = torch.as_tensor(volume, dtype=torch.float32).view(1, 1, resolution, resolution, resolution)

    def interpolate(query: Tensor) -> Tensor:
        # grid_sample's last coordinate indexes the first volume axis: pass (z, y, x)
        coords = (query.cpu().float() / radius).flip(-1).view(1, -1, 1, 1, 3)
        sampled = torch.nn.functional.grid_sample(grid, coords, mode="bilinear", align_corners=True)
        return sampled.view(-1).to(query.device)

    return interpolate


def density_volume(scene: ExportField, resolution: int) -> np.ndarray:
    """The scene's density on the ``resolution^3`` export grid over its bounding cube, [R, R, R]
    (``scene.density_grid``: point queries for a NeRF, Gaussians scattered into the grid for a Gaussian scene)."""
    return scene.density_grid(resolution)


@torch.no_grad()
def max_density_along_rays(density_fn: Callable[[Tensor], Tensor], cameras: Cameras, resolution: int,
                           radius: float, num_samples: int = 128, chunk: int = 65536) -> Tensor:
    """The largest density met by each pixel's ray inside the bounding sphere, [B, H, W] (0 for misses)."""
    origins, directions = cameras.rays(resolution, resolution)
    rays_o, rays_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    near, far, hit = intersect_sphere(rays_o, rays_d, radius)
    fractions = (torch.arange(num_samples, device=rays_o.device, dtype=rays_o.dtype) + 0.5) / num_samples
    depths = near[:, None] + (far - near)[:, None] * fractions  # [R, S]
    points = rays_o[:, None, :] + rays_d[:, None, :] * depths[..., None]  # [R, S, 3]
    density = torch.cat([density_fn(part) for part in points.reshape(-1, 3).split(chunk)])
    maxima = density.view(-1, num_samples).amax(dim=1) * hit
    return maxima.view(len(cameras), resolution, resolution)


def silhouette_threshold(max_density: Tensor, opacity: Tensor, num_candidates: int = 256) -> float:
    """The density level whose silhouettes ``max_density > level`` best match ``opacity > 0.5`` (by IoU).

    Args:
        max_density: [B, H, W] from :func:`max_density_along_rays`.
        opacity: [B, H, W] rendered opacity of the same cameras.
    """
    target = opacity > 0.5
    if not target.any():
        raise ExportError("the renders are empty (no pixel has opacity above 0.5), so there is no surface to "
                          "export; train longer or check the run's previews")
    positive = max_density[max_density > 0]
    low, high = float(positive.min()), float(positive.max())
    candidates = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), num_candidates)
    silhouettes = max_density.reshape(1, -1) > candidates.view(-1, 1)  # [C, pixels]
    flat_target = target.reshape(1, -1)
    iou = (silhouettes & flat_target).sum(1).double() / (silhouettes | flat_target).sum(1).double()
    return float(candidates[int(torch.argmax(iou))])


def export_cameras(distance: float, fovy_deg: float) -> Cameras:
    """16 views around the object (8 at 20 degrees elevation, 4 from above, 4 from below) for the level fit."""
    elevation = torch.tensor([20.0] * 8 + [60.0] * 4 + [-15.0] * 4)
    azimuth = torch.cat([torch.arange(8) * 45.0, torch.arange(4) * 90.0 + 45.0, torch.arange(4) * 90.0])
    return cameras_from_spherical(elevation, azimuth, torch.tensor(distance), torch.tensor(fovy_deg))


def solid_topology(volume: np.ndarray, level: float) -> tuple[int, int]:
    """The Euler characteristic (6- and 26-connected) of the largest connected piece of the solid
    ``volume > level`` [R, R, R] with its enclosed pockets filled: 1 for a ball, 0 for a solid torus, 1 - g for
    g handles. Its surface's Euler characteristic is twice that."""
    solid = ndimage.binary_fill_holes(volume > level)
    labels, count = ndimage.label(solid)
    if count == 0:
        return 0, 0
    largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return int(euler_number(largest, connectivity=1)), int(euler_number(largest, connectivity=3))


def stable_topology_level(volume: np.ndarray, fitted: float, num_levels: int = 16, lowest_fraction: float = 0.25,
                          plateau: int = 3) -> float:
    """A level at or below ``fitted`` where the solid's topology (:func:`solid_topology`) is stable: ``fitted``
    when the topology stays the same over the first ``plateau`` levels of a geometric ladder down to
    ``lowest_fraction * fitted``, else the second level of the highest such plateau.
    Where no level is stable, the highest level of the ladder with the fewest handles (largest Euler
    characteristic) on which 6- and 26-connectivity agree; when they agree nowhere, the highest level with the
    fewest handles by the smaller of the two counts (a NeRF snowman whose interior is foam at every level: the
    fitted level had -225 / -256, this rule takes a level with -10 / -12).

    Why: the silhouette fit only sees outlines. A field whose interior is barely denser than the fitted level
    (a camera-aware toy run's sphere: interior 1.6-2.6, fitted level 2.56, issue 17) is cut by that level into a
    foam of tunnels, and the mesh gets hundreds of handles. Such a topology changes from level to level; the
    real one (a ball, a torus) holds over a range, so the first stable level from the top keeps the silhouette
    fit wherever it was already sound. 6- and 26-connectivity must agree, so a level that marching cubes could
    resolve either way counts as unstable.
    """
    ladder = np.geomspace(fitted, fitted * lowest_fraction, num_levels)
    occupied = np.argwhere(volume > ladder[-1])
    if len(occupied) == 0:
        return float(fitted)
    low, high = np.maximum(occupied.min(0) - 1, 0), occupied.max(0) + 2  # one empty voxel around, where it exists
    volume = volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    topologies: list[tuple[int, int]] = []  # of ladder[0], ladder[1], ... computed as far as needed
    for start in range(num_levels - plateau + 1):
        while len(topologies) < start + plateau:
            topologies.append(solid_topology(volume, float(ladder[len(topologies)])))
        window = topologies[start:start + plateau]
        if window[0][0] == window[0][1] and all(t == window[0] for t in window):
            # below the fitted level, one rung into the plateau: at its top edge marching cubes can still
            # resolve the handle that closed just above it (a cyan cone: voxels 1, the mesh a handle)
            return float(ladder[0] if start == 0 else ladder[start + 1])
    # no plateau (a thin part opens and closes a handle from level to level): the highest level among those with
    # the fewest handles on which both connectivities agree
    agreeing = [(euler, -index) for index, (euler, euler_26) in enumerate(topologies) if euler == euler_26]
    if agreeing:
        return float(ladder[-max(agreeing)[1]])
    # they agree nowhere (a foam at every level): the highest level with the fewest handles counted by the
    # connectivity that sees more of them
    return float(ladder[-max((min(pair), -index) for index, pair in enumerate(topologies))[1]])


def surface_level(scene: ExportField, threshold: float | None,
                  render_opacity: Callable[[Cameras, int], Tensor] | None = None,
                  cameras: Cameras | None = None, resolution: int = 64,
                  volume: np.ndarray | None = None) -> float:
    """The density level of a scene's surface: ``threshold`` when given, else the level whose silhouettes
    best match the rendered opacity of ``cameras`` (:func:`silhouette_threshold`), lowered to a level of stable
    topology of ``volume`` (the grid marching cubes will see; :func:`stable_topology_level`) when one is given."""
    if threshold is not None:
        return float(threshold)
    if render_opacity is None or cameras is None:
        raise ValueError("an automatic export threshold needs render_opacity and cameras")
    device = next(scene.parameters()).device
    cameras = cameras.to(device)
    coarse = volume_interpolator(density_volume(scene, resolution), scene.radius)
    maxima = max_density_along_rays(coarse, cameras, resolution, scene.radius)
    fitted = silhouette_threshold(maxima.cpu(), render_opacity(cameras, resolution).cpu())
    return fitted if volume is None else stable_topology_level(volume, fitted)


def file_scale(mesh: trimesh.Trimesh, size: float) -> float:
    """Meters per scene unit that make the longest bounding-box side of ``mesh`` ``size`` meters (1 for size 0)."""
    longest = float(np.max(mesh.extents)) if len(mesh.vertices) else 0.0
    return size / longest if size > 0 and longest > 0 else 1.0


@contextmanager
def _stage(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def surface_mesh(scene: ExportField, volume: np.ndarray, cfg: ExportConfig, threshold: float,
                 timings: dict[str, float] | None = None) -> trimesh.Trimesh:
    """Marching cubes of the scene's density ``volume`` (:func:`density_volume` at ``cfg.resolution``; modified
    in place) at ``threshold`` and pymeshlab cleanup (world frame, uncolored)."""
    with _stage(timings, "extraction"):
        mesh = mesh_from_volume(volume, scene.radius, threshold, cfg.fill_voids)
    with _stage(timings, "cleanup"):
        mesh = clean_mesh(mesh, min_component_fraction=cfg.min_component_fraction,
                          target_faces=cfg.target_faces or None, max_hole_edges=cfg.close_holes,
                          remesh_iterations=cfg.remesh_iterations, remesh_edge_percent=cfg.remesh_edge_length)
    return mesh


def paint_mesh(mesh: trimesh.Trimesh, scene: ExportField, cfg: ExportConfig, fmt: str,
               timings: dict[str, float] | None = None) -> trimesh.Trimesh:
    """``mesh`` with the scene's appearance: a baked PBR texture (``cfg.appearance == 'texture'`` and a GLB or
    OBJ file) or vertex colors. Textures bake ``scene.export_albedo(cfg.resolution)`` (a Gaussian scene's albedo
    interpolated from the export grid: point queries at a million texels take minutes)."""
    if cfg.appearance == "texture" and fmt in ("glb", "obj"):
        with _stage(timings, "uv"):
            atlas = unwrap_uv(mesh, cfg.texture_size, cfg.texture_padding)
        with _stage(timings, "bake"):
            albedo = scene.export_albedo(cfg.resolution)
            return texture_mesh(mesh, albedo, cfg.texture_size, roughness_fn=getattr(scene, "roughness", None),
                                metallic_fn=getattr(scene, "metallic", None), metallic=cfg.metallic,
                                roughness=cfg.roughness, atlas=atlas)
    with _stage(timings, "bake"):
        return color_vertices(mesh, scene.albedo)


def export_scene(scene: Any, cfg: ExportConfig, path: Path, fmt: str, metadata: dict[str, Any],
                 render_opacity: Callable[[Cameras, int], Tensor] | None = None,
                 cameras: Cameras | None = None, timings: dict[str, float] | None = None) -> Path:
    """Write the scene as a mesh file (see the module docstring) and return ``path``.

    ``render_opacity(cameras, resolution) -> [B, H, W]`` and ``cameras`` are needed when
    ``cfg.threshold`` is None (automatic level) for a field scene. ``timings``, when given, receives the
    seconds spent per stage: extraction, cleanup, uv, bake, write.
    """
    if hasattr(scene, "export_mesh"):
        with _stage(timings, "bake"):
            mesh = scene.export_mesh(cfg, fmt)
        with _stage(timings, "write"):
            return save_mesh(mesh, path, fmt, metadata, scale=file_scale(mesh, cfg.size))

    with _stage(timings, "extraction"):
        volume = density_volume(scene, cfg.resolution)
        threshold = surface_level(scene, cfg.threshold, render_opacity, cameras, cfg.level_fit_resolution,
                                  volume if cfg.stable_topology else None)
    mesh = paint_mesh(surface_mesh(scene, volume, cfg, threshold, timings), scene, cfg, fmt, timings)
    with _stage(timings, "write"):
        return save_mesh(mesh, path, fmt, {**metadata, "density_threshold": round(float(threshold), 4)},
                         scale=file_scale(mesh, cfg.size))
