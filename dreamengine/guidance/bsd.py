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
``grad_scale = 0.1`` are LucidDreamer's (see ism.py), and so is the injection: ``grad_injection: sum`` (default)
gives d loss / dz = g, as the source's ``SpecifyGradient``; ``mean`` gives threestudio's g / B. The DreamBooth
LoRA of the source's teacher is not part of BSD.
Settings: :class:`dreamengine.config.guidance.BSDConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import (
    LucidDreamerSchedule,
    ScoreDistillation,
    add_noise,
    broadcast_to,
    predict_noise_under,
)


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


class BSDGuidance(LucidDreamerSchedule, ScoreDistillation):
    """Balanced score distillation with a frozen teacher. Stateless apart from its config."""

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = grad_scale w (alpha* c + (1 - alpha*) d) at z_t = q(z, eps, t)."""
        cfg, alphas_cumprod = self.cfg, self.teacher.alphas_cumprod
        z_t = add_noise(z, noise, t, alphas_cumprod)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
        c, d = bsd_directions(cfg.variant, eps_cond, eps_uncond, noise, cfg.classifier_ratio, cfg.auto_smoothing_scale)
        alpha = broadcast_to(pareto_weight(c, d), z)
        abar = broadcast_to(alphas_cumprod[t], z)
        if cfg.variant == "standard":
            w = abar.sqrt()
        else:
            w = (eps_uncond - noise).norm() * (1.0 - abar).sqrt() / cfg.auto_norm_divisor
        return cfg.grad_scale * w * (alpha * c + (1.0 - alpha) * d), {"alpha_mean": float(alpha.mean())}
