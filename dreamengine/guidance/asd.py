"""Asynchronous Score Distillation (ScaleDreamer, ``theEricMa/ScaleDreamer``
threestudio/models/guidance/stable_diffusion_asd_guidance.py, configs/single-prompt_benchmark/asd_sd_nerf.yaml;
guidance-math.md §5).

The same noise eps is used at two timesteps, t and a later t + dt (t per batch element; per group of views, and
dt with it, for a multi-view teacher):

    dt    = int(min(plus_ratio (t - min_step), T - 1 - t) U),  U ~ U(0, 1)  (U = 1 without plus_random)
    t2    = clamp(t + dt, 1, T - 1)
    eps^  = eps_u + s (eps_c - eps_u)            at z_t = q(z, eps, t), CFG convention B, s = 7.5
    g     = w(t) (eps^ - eps(z_t2; e_c, t2))     z_t2 = q(z, eps, t2), conditional only, no CFG

``dt`` is clamped to ``T - 1 - t`` *before* the multiplication by U (the source's second, effective
``get_t_plus``), so late t spread over [t, T - 1] rather than piling up on T - 1.

``min_step`` is the current lower bound of t. ``eps_u`` is the negative-prompt branch. ``w(t)`` is SDS's
(``sds`` 1 - abar_t by default). Schedules (source config, 25000 steps): ``min_step_percent`` 0.5 -> 0.02 and
``max_step_percent`` 0.98 -> 0.5 linearly over training. Post-processing: ``nan_to_num``, optional clamp.
Injected with ``gradient_to_loss`` (d loss / dz = g / B), as in the source.

Perp-Neg (``prompt_processor.perp_neg: true``, as the source's config): eps^ is Perp-Neg's combination
(guidance/perp_neg.py, convention B) with the prompt processor's negative weights multiplied by
``-guidance_perp_neg`` (source: -0.5, i.e. halved); the later term uses the same interpolated positive embedding.
Settings: :class:`dreamengine.config.guidance.ASDConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    broadcast_to,
    cfg_convention_b,
    timestep_weight,
    views_per_group,
)
from dreamengine.guidance.perp_neg import perp_neg_guidance, predict_with_negative_views


def later_timesteps(t: Tensor, min_step: int, plus_ratio: float, uniform: Tensor | None,
                    num_train_timesteps: int) -> Tensor:
    """t2 [B] long: ``dt = min(plus_ratio (t - min_step), T - 1 - t)``, times U when ``uniform`` [B] is given,
    truncated; ``t2 = clamp(t + dt, 1, T - 1)``."""
    dt = plus_ratio * (t - min_step).to(torch.float32)
    dt = torch.minimum(dt.clamp_min(0.0), (num_train_timesteps - 1 - t).to(torch.float32))
    if uniform is not None:
        dt = dt * uniform
    return (t + dt.long()).clamp(1, num_train_timesteps - 1)


class ASDGuidance(ScoreDistillation):
    """Asynchronous score distillation with a frozen teacher. Stateless apart from its config."""

    supports_perp_neg = True

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) (eps^(z_t) - eps(z_t2; e_c, t2)) with the same eps at t and at t2 = t + dt."""
        cfg, teacher, alphas_cumprod = self.cfg, self.teacher, self.teacher.alphas_cumprod
        min_step, _ = self.timestep_range(step)
        group = views_per_group(teacher)  # a multi-view teacher's views share t, so they share t2 too
        uniform = None
        if cfg.plus_random:
            uniform = torch.rand((z.shape[0] // group,), generator=generator).repeat_interleave(group).to(z.device)
        t2 = later_timesteps(t, min_step, cfg.plus_ratio, uniform, teacher.num_train_timesteps)
        z_t = add_noise(z, noise, t, alphas_cumprod)
        z_t2 = add_noise(z, noise, t2, alphas_cumprod)
        if prompts.neg is None:
            eps = teacher.predict_noise(torch.cat([z_t, z_t, z_t2]), torch.cat([t, t, t2]),
                                        torch.cat([prompts.cond, prompts.uncond, prompts.cond]), cameras)
            eps_cond, eps_uncond, eps_later = eps.chunk(3)
            eps_hat = cfg_convention_b(eps_cond, eps_uncond, cfg.guidance_scale)
        else:
            (eps_cond, eps_uncond), eps_views = predict_with_negative_views(
                teacher, z_t, t, [prompts.cond, prompts.uncond], prompts.neg, cameras)
            eps_later = teacher.predict_noise(z_t2, t2, prompts.cond, cameras)
            weights = prompts.neg_weights * -cfg.guidance_perp_neg
            eps_hat = perp_neg_guidance(eps_cond, eps_uncond, eps_views, weights, cfg.guidance_scale)
        w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
        return w * (eps_hat - eps_later), {"dt_mean": float((t2 - t).float().mean())}
