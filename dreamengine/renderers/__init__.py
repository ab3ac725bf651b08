"""Renderers: pure functions over tensors (``volume.render_volume``, ``splat.render_splats``,
``raster.render_mesh``), and the renderer objects the trainer uses, one per scene type (they hold per-run
render state such as the occupancy grid).

Submodules are imported where they are used (exporters use the rasterizer, the rasterizer uses scenes'
backgrounds, scenes use exporters), so importing this package costs nothing and creates no import cycle.
"""

from __future__ import annotations

from typing import Any

import torch


def build_renderer(scene_name: str, render_cfg: Any, radius: float, device: torch.device) -> Any:
    """The renderer object for a scene type (``scene.name``) with the run's ``render`` settings."""
    if scene_name == "nerf":
        from dreamengine.renderers.volume import VolumeRenderer

        return VolumeRenderer(render_cfg, radius, device)
    if scene_name == "gaussians":
        from dreamengine.renderers.splat import SplatRenderer

        return SplatRenderer(render_cfg, device)
    if scene_name == "mesh":
        from dreamengine.renderers.raster import RasterRenderer

        return RasterRenderer(render_cfg, device)
    raise ValueError(f"no renderer for scene {scene_name!r}")  # unreachable: config validation checks names


__all__ = ["build_renderer"]
