"""What is optimized: name -> config dataclass / class, and builders for scenes, backgrounds, optimizer groups."""

from __future__ import annotations

from typing import Any

import torch

from dreamengine.scenes.gaussians import GaussianScene, GaussiansConfig
from dreamengine.scenes.mesh import MeshScene, MeshSceneConfig
from dreamengine.scenes.nerf import Background, NeRFConfig, NeRFScene

SCENE_CONFIGS = {"nerf": NeRFConfig, "gaussians": GaussiansConfig, "mesh": MeshSceneConfig}
SCENES = {"nerf": NeRFScene, "gaussians": GaussianScene, "mesh": MeshScene}


def build_scene(cfg: Any) -> torch.nn.Module:
    """The scene named by ``cfg.name``, freshly initialized."""
    return SCENES[cfg.name](cfg)


def build_background(render_cfg: Any) -> Background:
    """The background of the render config (``solid`` color or a small ``mlp`` on view directions)."""
    return Background(mode=render_cfg.background, color=tuple(render_cfg.background_color))


def scene_param_groups(scene: torch.nn.Module, optim_cfg: Any, background: Background | None) -> list[dict[str, Any]]:
    """Adam groups of a scene (and of ``background`` when given). NeRF learning rates come from the ``optim``
    section; Gaussian and mesh scenes have per-parameter rates in their own config (``scene.lr_*``)."""
    if isinstance(scene, GaussianScene | MeshScene):
        return scene.param_groups(optim_cfg.lr_background, background)
    return scene.param_groups(optim_cfg.lr_encoding, optim_cfg.lr_network, optim_cfg.lr_background, background)


__all__ = ["SCENES", "SCENE_CONFIGS", "Background", "GaussianScene", "GaussiansConfig", "MeshScene", "MeshSceneConfig",
           "NeRFConfig", "NeRFScene", "build_background", "build_scene", "scene_param_groups"]
