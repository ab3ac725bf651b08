"""Held-out evaluation against the toy world's ground truth: mask IoU and PSNR per view."""

from __future__ import annotations

from typing import Any

import torch

from dreamengine.cameras import CameraSampler
from dreamengine.config import RunConfig
from dreamengine.errors import DreamEngineError
from dreamengine.renderers.volume import RenderOut
from dreamengine.toyworld import mask_iou, parse_prompt, psnr, render_toy


def held_out_cameras(cfg: RunConfig) -> Any:
    """An orbit whose azimuths fall halfway between the teacher bank's views (never trained on exactly)."""
    cam = cfg.camera
    sampler = CameraSampler(tuple(cam.elevation_range), tuple(cam.azimuth_range), tuple(cam.distance_range),
                            tuple(cam.fovy_range))
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
    with torch.no_grad():
        summary = {
            "mask_iou": mask_iou(out.opacity.cpu(), truth["mask"]),
            "psnr": psnr(out.rgb.cpu().clamp(0, 1), truth["rgb"]),
        }
    return {"prompt": cfg.prompt, "object": obj.name, "views": len(cameras), "resolution": res, **summary,
            "per_view": per_view}
