"""Evaluation against the toy world's ground truth (any run whose prompt names a toy-world object).

* Renders: mask IoU and PSNR on held-out views: ``eval.num_views`` azimuths (halfway between the teacher bank's
  views) at each of ``eval.elevations`` (default -10, 20 and 50 degrees: undersides, sides, tops), plus one view
  from straight above (``eval.overhead``). Reported over all views and per elevation band.
* Texture noise: the high-frequency part of the rendered color inside the object (the RMS of ``rgb`` minus its
  3x3 box blur, over pixels whose 3x3 neighborhood is foreground in both), ours and the truth's; speckles of
  noise written into the appearance raise ours far above the truth's.
* Saturation: mean HSV saturation of the foreground, ours vs ground truth (SDS is known to oversaturate).
* Janus score (view-asymmetric objects only): over back views, the fraction of renders that look clearly more
  like the back of the object's two-faced version (its front half copied onto the back) than like its true back.
* The exported mesh, when there is one: volumetric IoU and Chamfer distance against the true shape.
  Both meshes (ours, and marching cubes of the true SDF) are voxelized the same way, so the half-voxel
  bias of voxelization cancels; the Chamfer distance is the mean of both directions' mean
  nearest-neighbour distances between surface samples, in scene units (objects fit in radius 0.75).
  And its topology: watertight, number of connected pieces and Euler characteristic, next to the true
  shape's (2 for a sphere, cube, cylinder or cone; 0 for a torus, whose hole must stay open).

The ground truth depends only on the object and the measurement's settings, so it is computed once and kept
on disk (:mod:`dreamengine.core.disk_cache`, folder ``eval``): the true renders of the held-out and Janus views,
and the true shape's voxels, surface samples and topology. Each entry is exactly what would be recomputed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import skimage
import torch
import trimesh
from scipy.spatial import cKDTree
from torch import Tensor

from dreamengine.config import RunConfig
from dreamengine.core.cameras import Cameras, CameraSampler, cameras_from_spherical
from dreamengine.core.disk_cache import cached
from dreamengine.core.render import RenderOut
from dreamengine.errors import PromptError
from dreamengine.export import extract_mesh
from dreamengine.toyworld import ToyObject, mask_iou, parse_prompt, psnr, render_toy, volumetric_iou
from dreamengine.toyworld import render as toy_render

OVERHEAD_ELEVATION = 89.5  # degrees: "from straight above" (90 exactly has no azimuth to orient the camera by)
# Bump when the truth changes in a way the cache keys below do not capture (the objects, the toy renderer's
# lighting and tracing constants and the mesh libraries' versions are in the keys).
TRUTH_VERSION = 1
TRUTH_CACHE = "eval"  # the cache's folder under $DREAMENGINE_CACHE (or ~/.cache/dreamengine)


def _world_settings() -> dict[str, Any]:
    """What every true render depends on besides the object and the cameras."""
    return {"version": TRUTH_VERSION, "lighting": [toy_render.AMBIENT, toy_render.LIGHTS],
            "tracing": [toy_render.BOUND_RADIUS, toy_render.HIT_EPSILON, toy_render.MAX_STEPS,
                        toy_render.NORMAL_STEP, toy_render.LATE_HIT_EPSILON]}


def true_renders(hypothesis: Any, description: str, cameras: Cameras, resolution: int,
                 background: tuple[float, ...], supersample: int = 2) -> dict[str, torch.Tensor]:
    """``render_toy(hypothesis, cameras, resolution, resolution, background, supersample)``'s rgb and mask, from
    the disk cache when it has them. ``description`` names the hypothesis completely (its ``repr`` for a
    :class:`ToyObject`): it is the cache key's, with the cameras and the image settings."""
    settings = {**_world_settings(), "hypothesis": description, "resolution": int(resolution),
                "background": [float(v) for v in background], "supersample": int(supersample),
                "c2w": cameras.c2w.cpu().double().tolist(), "fovy": cameras.fovy.cpu().double().tolist()}
    shape = (len(cameras), resolution, resolution)

    def compute() -> dict[str, torch.Tensor]:
        out = render_toy(hypothesis, cameras.to("cpu"), resolution, resolution, background=tuple(background),
                         supersample=supersample)
        return {"rgb": out["rgb"].contiguous(), "mask": out["mask"].contiguous()}

    return cached(TRUTH_CACHE, "renders", settings, {"rgb": (*shape, 3), "mask": (*shape, 1)}, compute)


def toy_object(prompt: str) -> ToyObject | None:
    """The toy-world object ``prompt`` names, or None when it names none (nothing to measure against)."""
    try:
        return parse_prompt(prompt)
    except PromptError:
        return None


def truth_name(cfg: RunConfig) -> str:
    """What a run is measured against: the toy object its reference image shows (``image.object``, image-to-3D)
    or else the prompt."""
    image = getattr(cfg, "image", None)
    return image.object if image is not None and image.object else cfg.prompt


def held_out_cameras(cfg: RunConfig) -> Cameras:
    """``eval.num_views`` azimuths per elevation of ``eval.elevations``, halfway between the teacher bank's
    views (never trained on exactly), then one view from above when ``eval.overhead``."""
    sampler = CameraSampler.from_config(cfg.camera)
    start = 0.5 * getattr(cfg.teacher, "azimuth_step", 15.0)
    orbits = [sampler.orbit(cfg.eval.num_views, elevation_deg=float(e), start_azimuth_deg=start)
              for e in cfg.eval.elevations]
    if cfg.eval.overhead:
        orbits.append(sampler.orbit(1, elevation_deg=OVERHEAD_ELEVATION, start_azimuth_deg=start))
    return Cameras(*(torch.cat([getattr(c, name) for c in orbits])
                     for name in ("c2w", "fovy", "elevation", "azimuth", "distance")))


def band_name(elevation: float) -> str:
    """The elevation band a held-out view belongs to: ``"overhead"`` or its elevation in degrees."""
    return "overhead" if elevation >= OVERHEAD_ELEVATION - 1e-3 else f"{elevation:g}"


def evaluate_renders(cfg: RunConfig, render: Any) -> dict[str, Any]:
    """Compare ``render(cameras, H, W) -> RenderOut`` with ground truth on the held-out views."""
    obj = parse_prompt(truth_name(cfg))  # PromptError for a prompt outside the toy world
    cameras = held_out_cameras(cfg)
    res = cfg.eval.resolution
    out: RenderOut = render(cameras, res, res)
    truth = true_renders(obj, repr(obj), cameras, res, tuple(cfg.render.background_color), supersample=2)
    ours_rgb, ours_mask = out.rgb.detach().cpu().float().clamp(0, 1), out.opacity.detach().cpu().float()
    per_view = []
    for i in range(len(cameras)):
        per_view.append({
            "azimuth": float(cameras.azimuth[i]),
            "elevation": float(cameras.elevation[i]),
            "mask_iou": mask_iou(ours_mask[i:i + 1], truth["mask"][i:i + 1]),
            "psnr": psnr(ours_rgb[i:i + 1], truth["rgb"][i:i + 1]),
        })
    bands: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(band_name(float(e)) for e in cameras.elevation):
        views = [i for i in range(len(cameras)) if band_name(float(cameras.elevation[i])) == name]
        bands[name] = {"mask_iou": mask_iou(ours_mask[views], truth["mask"][views]),
                       "psnr": psnr(ours_rgb[views], truth["rgb"][views]), "views": len(views)}
    foreground = (truth["mask"] > 0.5) | (ours_mask > 0.5)
    inside = interior(truth["mask"] > 0.5) & interior(ours_mask > 0.5)
    summary = {
        "mask_iou": mask_iou(ours_mask, truth["mask"]),
        "psnr": psnr(ours_rgb, truth["rgb"]),
        "saturation": mean_saturation(ours_rgb, foreground),
        "true_saturation": mean_saturation(truth["rgb"], foreground),
        "texture_noise": texture_noise(ours_rgb, inside),
        "true_texture_noise": texture_noise(truth["rgb"], inside),
    }
    if obj.asymmetric:
        summary["janus_score"] = janus_score(obj, cfg, render)
    source = {"image": cfg.image.path} if getattr(cfg, "image", None) is not None and cfg.image.path else {}
    return {"prompt": cfg.prompt, "object": obj.name, **source, "views": len(cameras), "resolution": res, **summary,
            "bands": bands, "per_view": per_view}


def interior(mask: Tensor) -> Tensor:
    """Pixels [B, H, W, 1] whose whole 3x3 neighborhood is in ``mask`` [B, H, W, 1] (bool)."""
    eroded = -torch.nn.functional.max_pool2d(-mask.float().permute(0, 3, 1, 2), 3, stride=1, padding=1)
    return eroded.permute(0, 2, 3, 1) > 0.5


def texture_noise(rgb: Tensor, where: Tensor) -> float:
    """RMS of the high-frequency part of ``rgb`` [B, H, W, 3] (minus its 3x3 box blur) over pixels ``where``
    [B, H, W, 1]: near 0 on smoothly shaded flat colors, large on speckle noise."""
    image = rgb.permute(0, 3, 1, 2)
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    residual = (image - blurred).permute(0, 2, 3, 1)[where[..., 0]]  # [N, 3]
    return float(residual.pow(2).mean().sqrt()) if residual.numel() else 0.0


def mean_saturation(rgb: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean HSV saturation (max - min) / max of the pixels of ``rgb`` [B, H, W, 3] where ``mask`` [B, H, W, 1]."""
    high, low = rgb.amax(dim=-1), rgb.amin(dim=-1)
    saturation = (high - low) / high.clamp(min=1e-6)
    selected = saturation[mask[..., 0]]
    return float(selected.mean()) if selected.numel() else 0.0


class TwoFaced:
    """The Janus version of a toy object: its front half (x > 0; the front faces +X) copied onto its back half,
    mirrored (``x -> |x|``) or turned half a turn about the vertical axis (``(x, y) -> (-x, -y)`` for x < 0). It
    answers ``sdf`` and ``color`` like a :class:`ToyObject`, so it renders with the same lighting as the truth."""

    def __init__(self, obj: ToyObject, mode: str) -> None:
        if mode not in ("mirror", "turn"):
            raise ValueError(f"mode must be 'mirror' or 'turn', got {mode!r}")
        self.obj, self.mode = obj, mode

    def _front(self, points: Tensor) -> Tensor:
        back = points[:, :1] < 0
        if self.mode == "mirror":
            return torch.cat([points[:, :1].abs(), points[:, 1:]], dim=1)
        return torch.where(back, torch.cat([-points[:, :2], points[:, 2:]], dim=1), points)

    def sdf(self, points: Tensor) -> Tensor:
        return self.obj.sdf(self._front(points))

    def color(self, points: Tensor) -> Tensor:
        return self.obj.color(self._front(points))


JANUS_SCALE = 16  # views are compared at 16 x 16 pixels: features, not the renders' sharpness, decide
JANUS_MARGIN = 0.05  # a back view counts as Janus when (d_true - d_janus) / (d_true + d_janus) exceeds this


def janus_score(obj: ToyObject, cfg: RunConfig, render: Any, num_views: int = 5) -> float:
    """Fraction of back views (azimuth 150..210, elevation 15) that look more like the back of the object's
    two-faced version than like its true back. 0 is a consistent object; near 1 is a Janus (multi-faced) one.

    The hypotheses are rendered like the truth (the toy world's lighting): the true object, and its front half
    copied onto its back, mirrored or turned (:class:`TwoFaced`; the closer of the two counts). Each image is
    averaged down to 16 x 16 pixels (a blurry render of a two-faced object is still two-faced; a blurry render
    of the true object is not) and compared in squared L2; a view is Janus when its relative margin
    ``(d_true - d_janus) / (d_true + d_janus)`` exceeds 0.05, so a featureless blob, about as far from both,
    does not count. Comparing with the front view itself (the earlier rule) mixed up lighting with features: the
    back of a two-faced house is lit like the true back and matched it better than the front."""
    azimuth = torch.linspace(150.0, 210.0, num_views)
    distance, fovy = cfg.camera.framing()
    cameras = cameras_from_spherical(torch.full((num_views,), 15.0), azimuth, torch.tensor(distance),
                                     torch.tensor(fovy))
    res = cfg.eval.resolution
    background = tuple(cfg.render.background_color)

    def coarse(rgb: Tensor) -> Tensor:  # [B, H, W, 3] -> [B, 3 * 16 * 16]
        pooled = torch.nn.functional.adaptive_avg_pool2d(rgb.permute(0, 3, 1, 2).float(), JANUS_SCALE)
        return pooled.flatten(1)

    ours = coarse(render(cameras, res, res).rgb.detach().cpu().clamp(0, 1))

    def distance_to(hypothesis: Any, description: str) -> Tensor:
        rgb = true_renders(hypothesis, description, cameras, res, background, supersample=2)["rgb"]
        return ((ours - coarse(rgb)) ** 2).mean(1)

    to_true = distance_to(obj, repr(obj))
    to_janus = torch.minimum(distance_to(TwoFaced(obj, "mirror"), f"two-faced mirror {obj!r}"),
                             distance_to(TwoFaced(obj, "turn"), f"two-faced turn {obj!r}"))
    margin = (to_true - to_janus) / (to_true + to_janus).clamp_min(1e-12)
    return float((margin > JANUS_MARGIN).float().mean())


def true_mesh(obj: ToyObject, resolution: int = 128) -> trimesh.Trimesh:
    """Marching cubes of the object's exact SDF (negative inside)."""
    return extract_mesh(lambda points: -obj.sdf(points), radius=1.0, resolution=resolution, threshold=0.0)


def topology(mesh: trimesh.Trimesh) -> dict[str, Any]:
    """Watertight (every edge shared by exactly two faces), connected pieces, Euler characteristic V - E + F
    (2 per closed sphere-like piece, 0 for a torus), of the surface: vertices at the same position are welded
    first (a textured mesh splits its vertices along UV seams, which would read as open edges), and the triangles
    the welding collapses are dropped (marching cubes puts several vertices on a grid point where the field is
    exactly the level: the duck's true mesh read as 13 open pieces with Euler characteristic 12)."""
    mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return {"watertight": bool(mesh.is_watertight), "pieces": len(mesh.split(only_watertight=False)),
            "euler_characteristic": int(mesh.euler_number)}


def mesh_metrics(mesh: trimesh.Trimesh, obj: ToyObject, voxels: int = 96, surface_samples: int = 20000,
                 seed: int = 0) -> dict[str, Any]:
    """Volumetric IoU (on a ``voxels``^3 grid over the bounding cube) and Chamfer distance to the truth, and
    both meshes' topology (:func:`topology`; the truth's keys prefixed ``true_``)."""
    centers = voxel_centers(voxels)
    inside_ours = torch.from_numpy(mesh.voxelized(2.0 / voxels).fill().is_filled(centers))
    ours_points, _ = trimesh.sample.sample_surface(mesh, surface_samples, seed=seed)
    inside_true, true_points, true_topology = true_shape(obj, voxels, surface_samples, seed)
    to_truth, _ = cKDTree(true_points).query(ours_points)
    to_ours, _ = cKDTree(ours_points).query(true_points)
    return {"volumetric_iou": volumetric_iou(inside_ours, inside_true),
            "chamfer": float(0.5 * (to_truth.mean() + to_ours.mean())), **topology(mesh),
            **{f"true_{key}": value for key, value in true_topology.items()}}


def voxel_centers(voxels: int) -> np.ndarray:
    """The centers [voxels^3, 3] of the ``voxels``^3 grid over the bounding cube [-1, 1]^3."""
    pitch = 2.0 / voxels
    axis = (np.arange(voxels) + 0.5) * pitch - 1.0
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


TRUE_MESH_RESOLUTION = 128
TOPOLOGY_VERSION = 2  # 2: :func:`topology` drops the triangles that welding collapses


def true_shape(obj: ToyObject, voxels: int, surface_samples: int,
               seed: int) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """What :func:`mesh_metrics` compares with, from the true mesh (:func:`true_mesh`): which voxel centers it
    fills (bool [voxels^3]), ``surface_samples`` points on it (float64 [S, 3], drawn with ``seed``) and its
    :func:`topology`. Kept in the disk cache."""
    settings = {"version": TRUTH_VERSION, "topology": TOPOLOGY_VERSION, "object": repr(obj),
                "mesh_resolution": TRUE_MESH_RESOLUTION,
                "voxels": int(voxels), "surface_samples": int(surface_samples), "seed": int(seed),
                "libraries": [trimesh.__version__, skimage.__version__, np.__version__]}

    def compute() -> dict[str, torch.Tensor]:
        truth = true_mesh(obj, TRUE_MESH_RESOLUTION)
        inside = truth.voxelized(2.0 / voxels).fill().is_filled(voxel_centers(voxels))
        points, _ = trimesh.sample.sample_surface(truth, surface_samples, seed=seed)
        shape = topology(truth)
        return {"inside": torch.from_numpy(np.asarray(inside, dtype=np.uint8)),
                "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)),
                "topology": torch.tensor([int(shape["watertight"]), shape["pieces"], shape["euler_characteristic"]],
                                         dtype=torch.int64)}

    entry = cached(TRUTH_CACHE, "shape", settings, {"inside": (voxels**3,), "points": (surface_samples, 3),
                                                    "topology": (3,)}, compute)
    watertight, pieces, euler = (int(v) for v in entry["topology"])
    return (entry["inside"].bool(), entry["points"].numpy(),
            {"watertight": bool(watertight), "pieces": pieces, "euler_characteristic": euler})
