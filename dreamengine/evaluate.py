"""Evaluation against the toy world's ground truth.

* Renders: mask IoU and PSNR on held-out views (azimuths halfway between the teacher bank's views).
* Saturation: mean HSV saturation of the foreground, ours vs ground truth (SDS is known to oversaturate).
* Janus score (view-asymmetric objects only): over back views, the fraction of renders that look more
  like the object's front (seen from the same elevation, plain or mirrored) than like its true back.
* The exported mesh, when there is one: volumetric IoU and Chamfer distance against the true shape.
  Both meshes (ours, and marching cubes of the true SDF) are voxelized the same way, so the half-voxel
  bias of voxelization cancels; the Chamfer distance is the mean of both directions' mean
  nearest-neighbour distances between surface samples, in scene units (objects fit in radius 0.75).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from dreamengine.config import RunConfig
from dreamengine.core.cameras import CameraSampler, cameras_from_spherical
from dreamengine.core.render import RenderOut
from dreamengine.errors import DreamEngineError
from dreamengine.export import extract_mesh
from dreamengine.toyworld import ToyObject, mask_iou, parse_prompt, psnr, render_toy, volumetric_iou


def held_out_cameras(cfg: RunConfig) -> Any:
    """An orbit whose azimuths fall halfway between the teacher bank's views (never trained on exactly)."""
    sampler = CameraSampler.from_config(cfg.camera)
    step = getattr(cfg.teacher, "azimuth_step", 15.0)
    return sampler.orbit(cfg.eval.num_views, elevation_deg=cfg.eval.elevation, start_azimuth_deg=0.5 * step)


def evaluate_renders(cfg: RunConfig, render: Any) -> dict[str, Any]:
    """Compare ``render(cameras, H, W) -> RenderOut`` with ground truth on the held-out views."""
    if cfg.teacher.name != "toyworld":
        raise DreamEngineError("dreamengine eval measures against the toy world's ground truth, so it needs a run "
                               f"with teacher.name=toyworld (this run used {cfg.teacher.name!r})")
    obj = parse_prompt(cfg.prompt)
    cameras = held_out_cameras(cfg)
    res = cfg.eval.resolution
    out: RenderOut = render(cameras, res, res)
    truth = render_toy(obj, cameras, res, res, background=tuple(cfg.render.background_color), supersample=2)
    per_view = []
    for i in range(len(cameras)):
        per_view.append({
            "azimuth": float(cameras.azimuth[i]),
            "elevation": float(cameras.elevation[i]),
            "mask_iou": mask_iou(out.opacity[i:i + 1].cpu(), truth["mask"][i:i + 1]),
            "psnr": psnr(out.rgb[i:i + 1].cpu().clamp(0, 1), truth["rgb"][i:i + 1]),
        })
    foreground = (truth["mask"] > 0.5) | (out.opacity.cpu() > 0.5)
    summary = {
        "mask_iou": mask_iou(out.opacity.cpu(), truth["mask"]),
        "psnr": psnr(out.rgb.cpu().clamp(0, 1), truth["rgb"]),
        "saturation": mean_saturation(out.rgb.cpu().clamp(0, 1), foreground),
        "true_saturation": mean_saturation(truth["rgb"], foreground),
    }
    if obj.asymmetric:
        summary["janus_score"] = janus_score(obj, cfg, render)
    return {"prompt": cfg.prompt, "object": obj.name, "views": len(cameras), "resolution": res, **summary,
            "per_view": per_view}


def mean_saturation(rgb: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean HSV saturation (max - min) / max of the pixels of ``rgb`` [B, H, W, 3] where ``mask`` [B, H, W, 1]."""
    high, low = rgb.amax(dim=-1), rgb.amin(dim=-1)
    saturation = (high - low) / high.clamp(min=1e-6)
    selected = saturation[mask[..., 0]]
    return float(selected.mean()) if selected.numel() else 0.0


def janus_score(obj: ToyObject, cfg: RunConfig, render: Any, num_views: int = 5) -> float:
    """Fraction of back views (azimuth 150..210) whose render is closer (L2) to the object's front than to
    its back. 0 is a consistent object; near 1 is a Janus (multi-faced) one."""
    cam = cfg.camera
    azimuth = torch.linspace(150.0, 210.0, num_views)
    distance, fovy = float(np.mean(cam.distance_range)), float(np.mean(cam.fovy_range))
    elevation = torch.full((num_views,), 15.0)
    back_cameras = cameras_from_spherical(elevation, azimuth, torch.tensor(distance), torch.tensor(fovy))
    front_cameras = cameras_from_spherical(elevation, azimuth - 180.0, torch.tensor(distance), torch.tensor(fovy))
    res = cfg.eval.resolution
    background = tuple(cfg.render.background_color)
    ours = render(back_cameras, res, res).rgb.cpu().clamp(0, 1)
    back = render_toy(obj, back_cameras, res, res, background=background, supersample=2)["rgb"]
    front = render_toy(obj, front_cameras, res, res, background=background, supersample=2)["rgb"]

    def distance_to(images: torch.Tensor) -> torch.Tensor:
        return ((ours - images) ** 2).flatten(1).mean(1)

    to_front = torch.minimum(distance_to(front), distance_to(front.flip(2)))  # plain or mirrored front
    return float((to_front < distance_to(back)).float().mean())


def true_mesh(obj: ToyObject, resolution: int = 128) -> trimesh.Trimesh:
    """Marching cubes of the object's exact SDF (negative inside)."""
    return extract_mesh(lambda points: -obj.sdf(points), radius=1.0, resolution=resolution, threshold=0.0)


def mesh_metrics(mesh: trimesh.Trimesh, obj: ToyObject, voxels: int = 96, surface_samples: int = 20000,
                 seed: int = 0) -> dict[str, float]:
    """Volumetric IoU (on a ``voxels``^3 grid over the bounding cube) and Chamfer distance to the truth."""
    truth = true_mesh(obj)
    pitch = 2.0 / voxels
    axis = (np.arange(voxels) + 0.5) * pitch - 1.0
    centers = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    inside_ours = torch.from_numpy(mesh.voxelized(pitch).fill().is_filled(centers))
    inside_true = torch.from_numpy(truth.voxelized(pitch).fill().is_filled(centers))
    ours_points, _ = trimesh.sample.sample_surface(mesh, surface_samples, seed=seed)
    true_points, _ = trimesh.sample.sample_surface(truth, surface_samples, seed=seed)
    to_truth, _ = cKDTree(true_points).query(ours_points)
    to_ours, _ = cKDTree(ours_points).query(true_points)
    return {"volumetric_iou": volumetric_iou(inside_ours, inside_true),
            "chamfer": float(0.5 * (to_truth.mean() + to_ours.mean()))}
