"""Renderers: pure functions over tensors (``render_volume``, ``render_splats``), and the renderer objects the
trainer uses, one per scene type (they hold per-run render state such as the occupancy grid)."""

from __future__ import annotations

from typing import Any

import torch

from dreamengine.renderers.splat import SplatRenderer
from dreamengine.renderers.volume import RenderOut, VolumeRenderer


def build_renderer(scene_name: str, render_cfg: Any, radius: float, device: torch.device) -> Any:
    """The renderer object for a scene type (``scene.name``) with the run's ``render`` settings."""
    if scene_name == "nerf":
        return VolumeRenderer(render_cfg, radius, device)
    if scene_name == "gaussians":
        return SplatRenderer(render_cfg, device)
    raise ValueError(f"no renderer for scene {scene_name!r}")  # unreachable: config validation checks names


__all__ = ["RenderOut", "SplatRenderer", "VolumeRenderer", "build_renderer"]
