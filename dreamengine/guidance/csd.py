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
is not included here. Settings: :class:`dreamengine.config.guidance.CSDConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.config.guidance import CSDConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.protocols import Teacher
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    broadcast_to,
    predict_noise_under,
    timestep_weight,
)
from dreamengine.schedules import schedule_value


class CSDGuidance(ScoreDistillation):
    """Classifier score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: CSDConfig, teacher: Teacher, max_steps: int) -> None:
        super().__init__(cfg, teacher, max_steps)
        with torch.no_grad():
            self.null_embedding = teacher.embed([""])  # [1, ...] e_0

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) (k_c eps(e_c) + k_u eps(e_neg) + k_n eps(e_0) + k_e eps) at z_t = q(z, eps, t)."""
        cfg, alphas_cumprod = self.cfg, self.teacher.alphas_cumprod
        k_c, k_u, k_n, k_e = (schedule_value(v, step) for v in
                              (cfg.guidance_scale, cfg.uncond_scale, cfg.null_scale, cfg.noise_scale))
        e_0 = self.null_embedding.expand(z.shape[0], *self.null_embedding.shape[1:])
        z_t = add_noise(z, noise, t, alphas_cumprod)
        eps_cond, eps_neg, eps_null = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond, e_0],
                                                            cameras)
        w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
        return w * (k_c * eps_cond + k_u * eps_neg + k_n * eps_null + k_e * noise), {}

    def clean(self, grad: Tensor, step: int) -> Tensor:
        """``nan_to_num``, then ``g / |g|`` per sample when ``grad_normalize``, then the clamp ``grad_clip(step)``."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.cfg.grad_normalize:
            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            grad = grad / broadcast_to(norms, grad)
        if self.cfg.grad_clip is not None:
            clip = schedule_value(self.cfg.grad_clip, step)
            grad = grad.clamp(-clip, clip)
        return grad
