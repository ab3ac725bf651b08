"""Frozen 2D diffusion teachers: name -> config dataclass, and ``build_teacher``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dreamengine.teachers.base import Teacher


@dataclass
class ToyWorldTeacherConfig:
    """The exact toy-world teacher. Its bank is rendered with the run's camera distance, field of view
    and background (camera.distance_range / camera.fovy_range midpoints, render.background_color), so
    the teacher's images are framed exactly like the renders it scores."""

    name: str = "toyworld"
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it
    elevations: list[float] = field(default_factory=lambda: [-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0])
    azimuth_step: float = 15.0  # degrees between bank views


TEACHER_CONFIGS = {"toyworld": ToyWorldTeacherConfig}


def build_teacher(cfg: ToyWorldTeacherConfig, *, distance: float, fovy_deg: float,
                  background: tuple[float, float, float], view_thresholds: tuple[float, float, float],
                  device: torch.device) -> Teacher:
    """Construct the teacher named by ``cfg.name`` (imports are lazy: real teachers pull in diffusers)."""
    if cfg.name == "toyworld":
        from dreamengine.teachers.toyworld import ToyWorldTeacher

        front, back, overhead = view_thresholds
        return ToyWorldTeacher(resolution=cfg.resolution, background=tuple(background),
                               elevations=tuple(cfg.elevations), azimuth_step=cfg.azimuth_step,
                               distance=distance, fovy_deg=fovy_deg, front_threshold=front,
                               back_threshold=back, overhead_threshold=overhead, device=str(device))
    raise ValueError(f"unknown teacher {cfg.name!r}")  # unreachable: config validation checks names


__all__ = ["TEACHER_CONFIGS", "Teacher", "ToyWorldTeacherConfig", "build_teacher"]
