"""What is optimized: name -> config dataclass, and builders for scenes and backgrounds."""

from __future__ import annotations

from typing import Any

import torch

from dreamengine.scenes.nerf import Background, NeRFConfig, NeRFScene

SCENE_CONFIGS = {"nerf": NeRFConfig}
SCENES = {"nerf": NeRFScene}


def build_scene(cfg: Any) -> torch.nn.Module:
    """The scene named by ``cfg.name``, freshly initialized."""
    return SCENES[cfg.name](cfg)


def build_background(render_cfg: Any) -> Background:
    """The background of the render config (``solid`` color or a small ``mlp`` on view directions)."""
    return Background(mode=render_cfg.background, color=tuple(render_cfg.background_color))


__all__ = ["SCENES", "SCENE_CONFIGS", "Background", "NeRFConfig", "NeRFScene", "build_background", "build_scene"]
