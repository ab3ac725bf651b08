"""Balanced Score Distillation (PlacidDreamer, ``HansenHuang0823/PlacidDreamer`` guidance/sd_utils.py
``train_step_BSD`` / ``train_step_BSD_auto``; guidance-math.md §4).

Two guidance directions c (classifier) and d (smoothing) are balanced by the min-norm point of their
convex hull, per sample (dot products over all of C, H, W):

    z_t    = sqrt(abar_t) z + sqrt(1 - abar_t) eps                 one t for the whole batch, offset noise
    alpha* = clip(<d - c, d> / |d - c|^2, 0, 1)                    argmin over [0, 1] of |alpha c + (1 - alpha) d|
    g      = grad_scale * w * (alpha* c + (1 - alpha*) d)

* standard (``variant: standard``): ``c = classifier_ratio (eps_c - eps_u)``, ``d = eps_u`` (no ``- eps``),
  ``w = sqrt(abar_t)``. The official 3D code hard-codes ratio 15 (its README's ``--lambda_`` 18 is unused).
* auto (``variant: auto``): ``c = eps_c - eps_u``, ``d = auto_smoothing_scale (eps_u - eps)`` with 1.25,
  ``w = |eps_u - eps|_F sqrt(1 - abar_t) / auto_norm_divisor`` (Frobenius norm over the whole batch, 50).

``eps_u`` is the negative-prompt branch. Timesteps (``t ~ randint(20, 500 + int(480 r))``), offset noise and
``grad_scale = 0.1`` are LucidDreamer's (see ism.py). Injected with ``gradient_to_loss`` (d loss / dz = g / B;
the source's ``SpecifyGradient`` gives g). The DreamBooth LoRA of the source's teacher is not part of BSD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import (
    GuidanceOut,
    add_noise,
    broadcast_to,
    gradient_to_loss,
    lucid_timestep_range,
    offset_noise,
    predict_noise_under,
    reject_perp_neg,
    sample_shared_timestep,
    validate_lucid_config,
)
from dreamengine.prompts import PromptBatch
from dreamengine.teachers.base import Teacher

BSD_VARIANTS = ("standard", "auto")


@dataclass
class BSDConfig:
    name: str = "bsd"
    variant: str = "standard"  # one of BSD_VARIANTS
    classifier_ratio: float = 15.0  # standard: c = ratio (eps_c - eps_u)
    auto_smoothing_scale: float = 1.25  # auto: d = scale (eps_u - eps)
    auto_norm_divisor: float = 50.0  # auto: w = |eps_u - eps| sqrt(1 - abar_t) / divisor
    grad_scale: float = 0.1  # g is multiplied by this (LucidDreamer's lambda_guidance)
    warmup_steps: int = 1500  # steps over which the largest t anneals from 979 to 499
    min_step_percent: float = 0.02  # lower bound of t / T
    max_step_percent: float = 0.5  # upper bound of t / T after the warm-up
    warmup_max_step_percent: float = 0.98  # upper bound of t / T at step 0
    noise_offset: float = 0.1  # offset-noise amplitude

    def __post_init__(self) -> None:
        if self.variant not in BSD_VARIANTS:
            raise ConfigError(f"guidance.variant must be one of {', '.join(BSD_VARIANTS)}; got {self.variant!r}")
        if self.auto_norm_divisor <= 0:
            raise ConfigError(f"guidance.auto_norm_divisor must be > 0, got {self.auto_norm_divisor}")
        validate_lucid_config(self)


def pareto_weight(c: Tensor, d: Tensor) -> Tensor:
    """alpha* [B] in [0, 1] minimising ``|alpha c + (1 - alpha) d|`` per sample, c and d [B, ...].

    Where c == d every alpha gives the same point; 0 is returned.
    """
    diff = (d - c).flatten(1)
    num = (diff * d.flatten(1)).sum(dim=1)
    den = (diff * diff).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num)).clamp(0, 1)


def bsd_directions(variant: str, eps_cond: Tensor, eps_uncond: Tensor, noise: Tensor, ratio: float,
                   smoothing_scale: float) -> tuple[Tensor, Tensor]:
    """(c, d), the classifier and smoothing directions [B, ...] of the variant."""
    if variant == "standard":
        return ratio * (eps_cond - eps_uncond), eps_uncond
    return eps_cond - eps_uncond, smoothing_scale * (eps_uncond - noise)


class BSDGuidance:
    """Balanced score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: BSDConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        cfg = self.cfg
        return lucid_timestep_range(step, cfg.warmup_steps, self.teacher.num_train_timesteps, cfg.min_step_percent,
                                    cfg.max_step_percent, cfg.warmup_max_step_percent)

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B."""
        reject_perp_neg(prompts, "bsd")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        t = sample_shared_timestep(batch, *self.timestep_range(step), generator, z.device)
        noise = offset_noise(z.shape, cfg.noise_offset, generator, z.dtype, z.device)
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            eps_cond, eps_uncond = predict_noise_under(teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
            c, d = bsd_directions(cfg.variant, eps_cond, eps_uncond, noise, cfg.classifier_ratio,
                                  cfg.auto_smoothing_scale)
            alpha = broadcast_to(pareto_weight(c, d), z)
            abar = broadcast_to(alphas_cumprod[t], z)
            if cfg.variant == "standard":
                w = abar.sqrt()
            else:
                w = (eps_uncond - noise).norm() * (1.0 - abar).sqrt() / cfg.auto_norm_divisor
            grad = cfg.grad_scale * w * (alpha * c + (1.0 - alpha) * d)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "alpha_mean": float(alpha.mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
