"""Frozen 2D diffusion teachers: name -> config dataclass, and ``build_teacher``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dreamengine.errors import ConfigError
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


@dataclass
class StableDiffusionTeacherConfig:
    """A Stable Diffusion 1.x / 2.x model in diffusers format (see teachers/stable_diffusion.py).

    Offline use: on a connected machine run ``hf download REPO --local-dir DIR`` and set ``model: DIR``.
    """

    name: str = "stable-diffusion"
    model: str = "stabilityai/stable-diffusion-2-1-base"  # Hugging Face repo id or local diffusers folder
    revision: str | None = None  # hub branch / tag / commit (null: main); recorded in the run manifest
    device: str | None = None  # the teacher's device (cuda:1, cpu, ...); null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    channels_last: bool = True  # UNet in channels-last memory format (faster on recent GPUs)
    attention_slicing: bool = False  # compute attention in slices: less memory, slower
    enable_xformers: bool = False  # xformers attention (needs the xformers package; SDPA is the default)
    cpu_offload: bool = False  # keep weights on the CPU and move each part to the GPU when used (CUDA only)
    resolution: int | None = None  # renders are resized to this; null: the model's own (512 for SD 2.1-base)


@dataclass
class DeepFloydIFTeacherConfig:
    """DeepFloyd IF stage I: 64x64 pixel-space diffusion with a T5-XXL text encoder (teachers/deepfloyd_if.py).

    The hub repository is gated: accept the license on huggingface.co, then ``hf auth login``.
    """

    name: str = "deepfloyd-if"
    model: str = "DeepFloyd/IF-I-XL-v1.0"  # Hugging Face repo id or local diffusers folder
    revision: str | None = None  # hub branch / tag / commit (null: main)
    variant: str | None = None  # weight variant, "fp16" for the hub's half-precision files (null: default files)
    device: str | None = None  # the teacher's device; null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    cpu_offload: bool = False  # T5-XXL alone is about 10 GB in float16 (CUDA only)
    resolution: int | None = None  # renders are resized to this; null: the model's own (64 for IF stage I)


TEACHER_CONFIGS = {"toyworld": ToyWorldTeacherConfig, "stable-diffusion": StableDiffusionTeacherConfig,
                   "deepfloyd-if": DeepFloydIFTeacherConfig}


def teacher_device(name: str | None, run_device: torch.device) -> torch.device:
    """The teacher's own device (``teacher.device``), or the run's device when it is null."""
    device = torch.device(name) if name else torch.device(run_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"teacher.device={name} was asked for but PyTorch sees no CUDA GPU; set "
                          "teacher.device=null (the run's device) or cpu")
    return device


def build_teacher(cfg: ToyWorldTeacherConfig | StableDiffusionTeacherConfig | DeepFloydIFTeacherConfig, *,
                  distance: float, fovy_deg: float, background: tuple[float, float, float],
                  view_thresholds: tuple[float, float, float],
                  device: torch.device) -> Teacher:
    """Construct the teacher named by ``cfg.name`` (imports are lazy: real teachers pull in diffusers)."""
    if cfg.name == "toyworld":
        from dreamengine.teachers.toyworld import ToyWorldTeacher

        front, back, overhead = view_thresholds
        return ToyWorldTeacher(resolution=cfg.resolution, background=tuple(background),
                               elevations=tuple(cfg.elevations), azimuth_step=cfg.azimuth_step,
                               distance=distance, fovy_deg=fovy_deg, front_threshold=front,
                               back_threshold=back, overhead_threshold=overhead, device=str(device))
    if cfg.name == "stable-diffusion":
        from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher

        return StableDiffusionTeacher(cfg.model, revision=cfg.revision, device=teacher_device(cfg.device, device),
                                      dtype=cfg.dtype, channels_last=cfg.channels_last,
                                      attention_slicing=cfg.attention_slicing,
                                      enable_xformers=cfg.enable_xformers, cpu_offload=cfg.cpu_offload,
                                      resolution=cfg.resolution)
    if cfg.name == "deepfloyd-if":
        from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher

        return DeepFloydIFTeacher(cfg.model, revision=cfg.revision, device=teacher_device(cfg.device, device),
                                  dtype=cfg.dtype, variant=cfg.variant, cpu_offload=cfg.cpu_offload,
                                  resolution=cfg.resolution)
    raise ValueError(f"unknown teacher {cfg.name!r}")  # unreachable: config validation checks names


__all__ = ["TEACHER_CONFIGS", "DeepFloydIFTeacherConfig", "StableDiffusionTeacherConfig", "Teacher",
           "ToyWorldTeacherConfig", "build_teacher", "teacher_device"]
