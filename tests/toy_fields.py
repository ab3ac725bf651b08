"""Test helper: a toy-world object as a field scene (the ExportField and Field protocols), with a sharp surface."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dreamengine.export.marching import sample_density_grid
from dreamengine.toyworld import parse_prompt


class ToyField(torch.nn.Module):
    """A toy object as a field: density ``peak`` deep inside, ``peak / 2`` on the surface, falling off over
    ``sharpness`` (scene units) outside; its true colors. Volume renders and the level-set mesh of ``peak / 2``
    share their silhouettes when ``sharpness`` is small."""

    def __init__(self, prompt: str, peak: float = 100.0, sharpness: float = 0.01) -> None:
        super().__init__()
        self.obj = parse_prompt(prompt)
        self.peak, self.sharpness = peak, sharpness
        self.radius = 1.0
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the exporter finds a device

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.peak * torch.sigmoid(-self.obj.sdf(points) / self.sharpness)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.obj.color(points)

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(points), self.albedo(points)

    def density_grid(self, resolution: int) -> np.ndarray:
        return sample_density_grid(self.density, self.radius, resolution)

    def export_albedo(self, resolution: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.albedo
