"""Classifier Score Distillation (Yu et al. 2023, arXiv 2310.19415; ``CVMI-Lab/Classifier-Score-Distillation``
stable_diffusion_triple_guidance.py; guidance-math.md §3b).

A weighted sum of three predictions at the same randomly noised z_t (t per batch element, as threestudio):

    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
    g   = w(t) (k_c eps(z_t; e_c) + k_u eps(z_t; e_neg) + k_n eps(z_t; e_0) + k_e eps)

with no CFG scale and, at the defaults ``(k_c, k_u, k_n, k_e) = (1, 0, -1, 0)``, no ``- eps`` term:
pure CSD ``g = w(t) (eps_c - eps_0)``. Each k is a schedule; the released configs keep ``k_c + k_u + k_n = 0``,
i.e. ``g = w [(eps_c - eps_0) - beta (eps_neg - eps_0)]`` (IF NeRF stage: beta 0 -> 1 over 5000 steps,
``uncond_scale: [0, -0, -1, 5000]``, ``null_scale: [0, -1, 0, 5000]``, uniform w).

``e_neg`` is the PromptBatch's negative-prompt branch; ``e_0`` is the teacher's embedding of ``""``, computed
once. With no negative prompt set (the default) e_neg == e_0 -- for the toy teacher both are the
whole-world prior -- so the beta schedule has no effect: set ``prompt_processor.negative_prompt``.

Post-processing: ``nan_to_num``, optional ``grad_normalize`` (g / |g| per sample), optional element-wise
clamp ``grad_clip``. Injected with ``gradient_to_loss`` (d loss / dz = g / B). The source's Perp-Neg term
is not included here.
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
class CSDConfig:
    name: str = "csd"
    guidance_scale: Any = 1.0  # schedule: k_c, weight of eps(e_c)
    uncond_scale: Any = 0.0  # schedule: k_u, weight of eps(e_neg) (the negative prompt)
    null_scale: Any = -1.0  # schedule: k_n, weight of eps(e_0) (the empty prompt)
    noise_scale: Any = 0.0  # schedule: k_e, weight of the sampled noise eps
    weighting: str = "uniform"  # one of WEIGHTINGS (IF NeRF stage: uniform; SD refine: sds)
    min_step_percent: Any = 0.02  # schedule: lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    grad_normalize: bool = False  # divide g by its norm per sample
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        for key in ("guidance_scale", "uncond_scale", "null_scale", "noise_scale", "min_step_percent",
                    "max_step_percent"):
            validate_schedule(getattr(self, key), f"guidance.{key}")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


class CSDGuidance:
    """Classifier score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: CSDConfig, teacher: Teacher, max_steps: int) -> None:
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
        reject_perp_neg(prompts, "csd")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        t = sample_timesteps(batch, *self.timestep_range(step), generator, z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        k_c, k_u, k_n, k_e = (schedule_value(v, step) for v in
                              (cfg.guidance_scale, cfg.uncond_scale, cfg.null_scale, cfg.noise_scale))
        e_0 = self.null_embedding.expand(batch, *self.null_embedding.shape[1:])
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            eps_cond, eps_neg, eps_null = predict_noise_under(teacher, z_t, t, [prompts.cond, prompts.uncond, e_0],
                                                                cameras)
            w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
            grad = w * (k_c * eps_cond + k_u * eps_neg + k_n * eps_null + k_e * noise)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if cfg.grad_normalize:
                norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                grad = grad / broadcast_to(norms, grad)
            if cfg.grad_clip is not None:
                clip = schedule_value(cfg.grad_clip, step)
                grad = grad.clamp(-clip, clip)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
