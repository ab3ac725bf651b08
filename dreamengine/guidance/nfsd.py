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
Injected with ``gradient_to_loss`` (d loss / dz = g / B). Settings: :class:`dreamengine.config.guidance.NFSDConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.config.guidance import NFSDConfig
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


class NFSDGuidance(ScoreDistillation):
    """Noise-free score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: NFSDConfig, teacher: Teacher, max_steps: int) -> None:
        super().__init__(cfg, teacher, max_steps)
        with torch.no_grad():
            self.null_embedding = teacher.embed([""])  # [1, ...] e_0

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) (d_D + s d_C) at z_t = q(z, eps, t)."""
        cfg, alphas_cumprod = self.cfg, self.teacher.alphas_cumprod
        e_0 = self.null_embedding.expand(z.shape[0], *self.null_embedding.shape[1:])
        z_t = add_noise(z, noise, t, alphas_cumprod)
        eps_cond, eps_neg, eps_null = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond, e_0],
                                                            cameras)
        d_c = eps_cond - eps_null
        small_t = (t < cfg.small_t_threshold).view(-1, *([1] * (z.dim() - 1)))
        d_d = torch.where(small_t, eps_null, eps_null - eps_neg)
        w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
        return w * (d_d + cfg.guidance_scale * d_c), {}
