"""Classifier Score Distillation (Yu et al. 2023, arXiv 2310.19415; ``CVMI-Lab/Classifier-Score-Distillation``
stable_diffusion_triple_guidance.py, deep_floyd_simple_guidance.py; guidance-math.md §3b).

A weighted sum of three predictions at the same randomly noised z_t (t per batch element, as threestudio):

    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
    g   = w(t) (k_c eps(z_t; e_c) + k_u eps(z_t; e_neg) + k_n eps(z_t; e_0) + k_e eps)
          [+ w(t) k_p sum_i w_i perp(eps(e_neg_i) - eps(e_neg), eps(e_c) - eps(e_neg))    with Perp-Neg]

with no CFG scale and, at the defaults ``(k_c, k_u, k_n, k_e) = (1, 0, -1, 0)``, no ``- eps`` term:
pure CSD ``g = w(t) (eps_c - eps_0)``. Each k is a schedule; the released configs keep ``k_c + k_u + k_n = 0``,
i.e. ``g = w [(eps_c - eps_0) - beta (eps_neg - eps_0)]`` (IF NeRF stage: beta 0 -> 1 over 5000 steps,
``uncond_scale: [0, -0, -1, 5000]``, ``null_scale: [0, -1, 0, 5000]``, uniform w).

``e_neg`` is the PromptBatch's negative-prompt branch; ``e_0`` is the teacher's embedding of ``""``, computed
once. With no negative prompt set (the default) e_neg == e_0 -- for the toy teacher both are the
whole-world prior -- so the beta schedule has no effect: set ``prompt_processor.negative_prompt``.

Perp-Neg (``prompt_processor.perp_neg: true``, as the source's IF config): ``e_c`` is then the azimuth-interpolated
positive embedding and the perpendicular sum of the negative views (Perp-Neg's combination without its
``e_pos`` part, guidance/perp_neg.py) is added with weight ``perpneg_scale`` (source: 3).

Post-processing, in the source's order: ``nan_to_num``, the optional element-wise clamp ``grad_clip``, then the
optional ``grad_normalize``: g / (|g| + 1e-8) with the norm of the *whole batch tensor* (not per sample).
Injected with ``gradient_to_loss`` (d loss / dz = g / B). Settings: :class:`dreamengine.config.guidance.CSDConfig`.
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
from dreamengine.guidance.perp_neg import perpendicular_sum, predict_with_negative_views
from dreamengine.schedules import schedule_value


class CSDGuidance(ScoreDistillation):
    """Classifier score distillation with a frozen teacher. Stateless apart from its config."""

    supports_perp_neg = True

    def __init__(self, cfg: CSDConfig, teacher: Teacher, max_steps: int) -> None:
        super().__init__(cfg, teacher, max_steps)
        with torch.no_grad():
            self.null_embedding = teacher.embed([""])  # [1, ...] e_0

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) (k_c eps(e_c) + k_u eps(e_neg) + k_n eps(e_0) + k_e eps [+ k_p perp-neg sum]) at z_t."""
        cfg, alphas_cumprod = self.cfg, self.teacher.alphas_cumprod
        k_c, k_u, k_n, k_e = (schedule_value(v, step) for v in
                              (cfg.guidance_scale, cfg.uncond_scale, cfg.null_scale, cfg.noise_scale))
        e_0 = self.null_embedding.expand(z.shape[0], *self.null_embedding.shape[1:])
        z_t = add_noise(z, noise, t, alphas_cumprod)
        embeddings = [prompts.cond, prompts.uncond, e_0]
        if prompts.neg is None:
            eps_cond, eps_neg, eps_null = predict_noise_under(self.teacher, z_t, t, embeddings, cameras)
        else:
            (eps_cond, eps_neg, eps_null), eps_views = predict_with_negative_views(self.teacher, z_t, t, embeddings,
                                                                                   prompts.neg, cameras)
        w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
        grad = w * (k_c * eps_cond + k_u * eps_neg + k_n * eps_null + k_e * noise)
        if prompts.neg is not None:
            perp = perpendicular_sum(eps_cond, eps_neg, eps_views, prompts.neg_weights)
            grad = grad + w * schedule_value(cfg.perpneg_scale, step) * perp
        return grad, {}

    def clean(self, grad: Tensor, step: int) -> Tensor:
        """``nan_to_num``, the clamp ``grad_clip(step)``, then ``g / (|g| + 1e-8)`` over the whole batch tensor when
        ``grad_normalize`` (the source's order and norm)."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.cfg.grad_clip is not None:
            clip = schedule_value(self.cfg.grad_clip, step)
            grad = grad.clamp(-clip, clip)
        if self.cfg.grad_normalize:
            grad = grad / (torch.linalg.vector_norm(grad) + 1e-8)
        return grad
