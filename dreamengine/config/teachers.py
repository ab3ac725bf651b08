"""Teacher settings (``teacher:`` in a config, chosen by ``teacher.name``). See ``dreamengine/teachers/``."""

from __future__ import annotations

from dataclasses import dataclass, field


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
class ToyWorldOracleConfig:
    """The toy world's oracle (teachers/toyworld_oracle.py): it knows the true image from every camera, so
    guiding with it is multi-view reconstruction against ground truth. The ceiling of bench/ceiling.py."""

    name: str = "toyworld-oracle"
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it


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


TEACHER_CONFIGS = {"toyworld": ToyWorldTeacherConfig, "toyworld-oracle": ToyWorldOracleConfig,
                   "stable-diffusion": StableDiffusionTeacherConfig, "deepfloyd-if": DeepFloydIFTeacherConfig}

