"""A trained scene -> a cleaned, vertex-colored mesh file (the spine's export path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamengine.config import ExportConfig
from dreamengine.export import clean_mesh, color_vertices, extract_mesh, save_mesh

FORMATS = ("glb", "obj", "ply")


def export_scene(scene: torch.nn.Module, cfg: ExportConfig, path: Path, fmt: str,
                 metadata: dict[str, Any]) -> Path:
    """Marching cubes on the scene's density, pymeshlab cleanup, albedo vertex colors, write ``path``."""
    mesh = extract_mesh(scene.density, radius=scene.radius, resolution=cfg.resolution, threshold=cfg.threshold)
    mesh = clean_mesh(mesh, min_component_fraction=cfg.min_component_fraction,
                      target_faces=cfg.target_faces or None)
    mesh = color_vertices(mesh, scene.albedo)
    return save_mesh(mesh, path, fmt, metadata)
