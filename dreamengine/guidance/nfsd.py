"""Noise-Free Score Distillation (Katzir et al., ICLR 2024, Eq. 6; orenkatzir.github.io/nfsd;
guidance-math.md §5).

At a randomly noised z_t (t per batch element, as threestudio):

    d_C = eps(z_t; e_c) - eps(z_t; e_0)                          the condition direction
    d_D = eps(z_t; e_0)                        if t < small_t_threshold (200)
        = eps(z_t; e_0) - eps(z_t; e_neg)      otherwise          the "denoising" direction
    g   = w(t) (d_D + s d_C)                                       no - eps term, s = 7.5

``e_0`` is the teacher's embedding of ``""`` (computed once); ``e_neg`` is the PromptBatch's negative-prompt
branch. The paper's negative prompt is "unrealistic, blurry, low quality, out of focus, ugly, low
contrast, dull, dark, low-resolution, gloomy" (set ``prompt_processor.negative_prompt``). With no negative
prompt e_neg == e_0 (for the toy teacher both are the whole-world prior) and d_D is 0 for t >= 200.

``w(t)`` is SDS's (``sds`` 1 - abar_t by default). Post-processing: ``nan_to_num``, optional clamp.
Injected with ``gradient_to_loss`` (d loss / dz = g / B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import (
    GuidanceOut,
    add_noise,
    broadcast_to,
    gradient_to_loss,
    percent_timestep_range,
    predict_noise_under,
    reject_perp_neg,
    sample_timesteps,
)
from dreamengine.guidance.sds import WEIGHTINGS, timestep_weight
from dreamengine.prompts import PromptBatch
from dreamengine.schedules import schedule_value, validate_schedule
from dreamengine.teachers.base import Teacher


@dataclass
class NFSDConfig:
    name: str = "nfsd"
    guidance_scale: float = 7.5  # s, the weight of d_C
    small_t_threshold: int = 200  # below this t, d_D = eps(e_0); from it on, eps(e_0) - eps(e_neg)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = 0.02  # schedule: lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        if self.small_t_threshold < 0:
            raise ConfigError(f"guidance.small_t_threshold must be >= 0, got {self.small_t_threshold}")
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


class NFSDGuidance:
    """Noise-free score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: NFSDConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps
        with torch.no_grad():
            self.null_embedding = teacher.embed([""])  # [1, ...] e_0

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        return percent_timestep_range(self.cfg.min_step_percent, self.cfg.max_step_percent, step,
                                      self.teacher.num_train_timesteps)

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B."""
        reject_perp_neg(prompts, "nfsd")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        t = sample_timesteps(batch, *self.timestep_range(step), generator, z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        e_0 = self.null_embedding.expand(batch, *self.null_embedding.shape[1:])
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            eps_cond, eps_neg, eps_null = predict_noise_under(teacher, z_t, t, [prompts.cond, prompts.uncond, e_0],
                                                                cameras)
            d_c = eps_cond - eps_null
            small_t = (t < cfg.small_t_threshold).view(-1, *([1] * (z.dim() - 1)))
            d_d = torch.where(small_t, eps_null, eps_null - eps_neg)
            w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
            grad = torch.nan_to_num(w * (d_d + cfg.guidance_scale * d_c), nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.grad_clip is not None:
                clip = schedule_value(cfg.grad_clip, step)
                grad = grad.clamp(-clip, clip)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
