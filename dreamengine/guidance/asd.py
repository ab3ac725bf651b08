"""Asynchronous Score Distillation (ScaleDreamer, ``theEricMa/ScaleDreamer``
threestudio/models/guidance/stable_diffusion_asd_guidance.py, configs/single-prompt_benchmark/asd_sd_nerf.yaml;
guidance-math.md §5).

The same noise eps is used at two timesteps, t and a later t + dt (t per batch element):

    dt    = int(plus_ratio (t - min_step) U),  U ~ U(0, 1)  (U = 1 without plus_random)
    t2    = clamp(t + dt, 1, T - 1)
    eps^  = eps_u + s (eps_c - eps_u)            at z_t = q(z, eps, t), CFG convention B, s = 7.5
    g     = w(t) (eps^ - eps(z_t2; e_c, t2))     z_t2 = q(z, eps, t2), conditional only, no CFG

``min_step`` is the current lower bound of t. ``eps_u`` is the negative-prompt branch. ``w(t)`` is SDS's
(``sds`` 1 - abar_t by default). Schedules (source config, 25000 steps): ``min_step_percent`` 0.5 -> 0.02 and
``max_step_percent`` 0.98 -> 0.5 linearly over training. Post-processing: ``nan_to_num``, optional clamp.
Injected with ``gradient_to_loss`` (d loss / dz = g / B), as in the source. The source's Perp-Neg
(``guidance_perp_neg: -0.5``) is not included here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import (
    GuidanceOut,
    add_noise,
    broadcast_to,
    cfg_convention_b,
    gradient_to_loss,
    percent_timestep_range,
    reject_perp_neg,
    sample_timesteps,
)
from dreamengine.guidance.sds import WEIGHTINGS, timestep_weight
from dreamengine.prompts import PromptBatch
from dreamengine.schedules import schedule_value, validate_schedule
from dreamengine.teachers.base import Teacher


@dataclass
class ASDConfig:
    name: str = "asd"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    plus_ratio: float = 0.1  # dt is at most plus_ratio (t - min_step)
    plus_random: bool = True  # dt scaled by U(0, 1)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = field(default_factory=lambda: [0, 0.5, 0.02, 25000])  # schedule: lower bound of t / T
    max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.5, 25000])  # schedule: upper bound of t / T
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        if self.plus_ratio < 0:
            raise ConfigError(f"guidance.plus_ratio must be >= 0, got {self.plus_ratio}")
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


def later_timesteps(t: Tensor, min_step: int, plus_ratio: float, uniform: Tensor | None,
                    num_train_timesteps: int) -> Tensor:
    """t2 = clamp(t + int(plus_ratio (t - min_step) U), 1, T - 1) [B] long; ``uniform`` is U [B] or None (1)."""
    dt = plus_ratio * (t - min_step).to(torch.float32)
    if uniform is not None:
        dt = dt * uniform
    return (t + dt.long()).clamp(1, num_train_timesteps - 1)


class ASDGuidance:
    """Asynchronous score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: ASDConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        return percent_timestep_range(self.cfg.min_step_percent, self.cfg.max_step_percent, step,
                                      self.teacher.num_train_timesteps)

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B."""
        reject_perp_neg(prompts, "asd")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        min_step, max_step = self.timestep_range(step)
        t = sample_timesteps(batch, min_step, max_step, generator, z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        uniform = torch.rand((batch,), generator=generator).to(z.device) if cfg.plus_random else None
        t2 = later_timesteps(t, min_step, cfg.plus_ratio, uniform, teacher.num_train_timesteps)
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            z_t2 = add_noise(z.detach(), noise, t2, alphas_cumprod)
            eps = teacher.predict_noise(torch.cat([z_t, z_t, z_t2]), torch.cat([t, t, t2]),
                                        torch.cat([prompts.cond, prompts.uncond, prompts.cond]), cameras)
            eps_cond, eps_uncond, eps_later = eps.chunk(3)
            eps_hat = cfg_convention_b(eps_cond, eps_uncond, cfg.guidance_scale)
            w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
            grad = torch.nan_to_num(w * (eps_hat - eps_later), nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.grad_clip is not None:
                clip = schedule_value(cfg.grad_clip, step)
                grad = grad.clamp(-clip, clip)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "dt_mean": float((t2 - t).float().mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
