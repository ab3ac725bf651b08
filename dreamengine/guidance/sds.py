"""Score Distillation Sampling (DreamFusion), as threestudio implements it (guidance-math.md §1).

    z_t   = sqrt(abar_t) z + sqrt(1 - abar_t) eps                      eps ~ N(0, I), t per element
    eps^  = eps_c + s (eps_c - eps_u)                                  CFG convention A (threestudio)
    g     = w(t) (eps^ - eps)        w: "sds" 1 - abar_t | "uniform" 1 | "fantasia3d" sqrt(abar_t)(1 - abar_t)

``eps_u`` is the negative-prompt branch. When the prompts carry Perp-Neg negatives (``prompts.neg``), eps^
is Perp-Neg's combination instead, which uses convention B (``guidance/perp_neg.py``, guidance-math.md §6).
``g`` is cleaned with ``nan_to_num``, optionally clamped to ``[-c, c]`` with ``c = grad_clip(step)``, and
injected with ``gradient_to_loss`` so that d loss / d z == g / B exactly (the skeleton in base.py).
Settings: :class:`dreamengine.config.guidance.SDSConfig`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    cfg_convention_a,
    percent_range,
    predict_noise_under,
    timestep_weight,
)
from dreamengine.guidance.perp_neg import perp_neg_guidance
from dreamengine.schedules import schedule_value


class SDSGuidance(ScoreDistillation):
    """Score distillation with a frozen teacher. Stateless apart from its config."""

    supports_perp_neg = True

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step; one t with HiFA's ``sqrt_anneal``."""
        p_min = schedule_value(self.cfg.min_step_percent, step)
        p_max = schedule_value(self.cfg.max_step_percent, step)
        if self.cfg.sqrt_anneal:
            p = p_max - (p_max - p_min) * math.sqrt(min(step / max(self.max_steps, 1), 1.0))
            p_min = p_max = p
        return percent_range(p_min, p_max, self.teacher.num_train_timesteps)

    def perp_neg_eps(self, z_t: Tensor, t: Tensor, prompts: PromptBatch, cameras: Cameras | None) -> Tensor:
        """Perp-Neg's eps^ [B, ...]: one teacher call on [positive, uncond, K negatives] x B (convention B)."""
        batch, negatives = z_t.shape[0], prompts.neg.shape[1]
        copies = 2 + negatives
        neg = prompts.neg.transpose(0, 1).reshape(negatives * batch, *prompts.neg.shape[2:])  # k-major
        eps = self.teacher.predict_noise(z_t.repeat(copies, *([1] * (z_t.dim() - 1))), t.repeat(copies),
                                         torch.cat([prompts.cond, prompts.uncond, neg]), cameras)
        eps_neg = eps[2 * batch:].reshape(negatives, batch, *z_t.shape[1:]).transpose(0, 1)  # [B, K, ...]
        return perp_neg_guidance(eps[:batch], eps[batch:2 * batch], eps_neg, prompts.neg_weights,
                                 self.cfg.guidance_scale)

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) (eps^ - eps) at z_t = q(z, eps, t)."""
        alphas_cumprod = self.teacher.alphas_cumprod
        z_t = add_noise(z, noise, t, alphas_cumprod)
        if prompts.neg is None:
            eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
            eps_hat = cfg_convention_a(eps_cond, eps_uncond, self.cfg.guidance_scale)
        else:
            eps_hat = self.perp_neg_eps(z_t, t, prompts, cameras)
        w = timestep_weight(self.cfg.weighting, alphas_cumprod[t].to(z.dtype)).view(-1, *([1] * (z.dim() - 1)))
        return w * (eps_hat - noise), {}
