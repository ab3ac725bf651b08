"""Interval Score Matching (LucidDreamer, ``EnVision-Research/LucidDreamer`` guidance/sd_utils.py ``train_step``,
train.py, arguments/__init__.py; guidance-math.md §3a).

    s     = max(t - delta, t_min)                              one t for the whole batch
    x_s   = DDIM-invert z from ~t_min to s in steps of ``xs_delta_t`` (at most ``xs_inv_steps``), eps(.; e_inv)
    e_s   = eps(x_s; e_inv, s)                                 the target
    x_t   = ddim_step(x_s, e_s, s -> t)                        deterministic x_t
    eps^  = eps_u + s_cfg (eps_c - eps_u)                      CFG convention B, at x_t
    g     = grad_scale * sqrt((1 - abar_t) / abar_t) * (eps^ - e_s)

``e_inv`` is the embedding of ``inverse_prompt`` ("" by default: the true unconditional model, *not* the
negative prompt; for the toy teacher "" is the whole-world prior). ``eps_u`` is the negative-prompt branch.

Schedules (LucidDreamer): an index ``i ~ randint(20, 500 + int(480 r))`` (upper bound exclusive) with
``r = 1 - min(step / warmup_steps, 1)``; LucidDreamer's DDIM scheduler turns it into the timestep
``t = i + steps_offset`` (the teacher's scheduler config: 1 for Stable Diffusion, 0 for the toy world), so every
timestep here, ``t_min = steps_offset`` included, is shifted by it. ``delta = int(delta_t + r (delta_t_start -
delta_t))`` when ``annealing_intervals``. The noise that brings z to the start of the inversion is
``randn + noise_offset * randn(1, C, 1, 1)``. ``inversion_floor`` (0 by default, as the source) raises the
inversion's start to ``t_min + inversion_floor`` (when s is below it, the walk goes down to s instead): an exact
teacher over a finite bank, the toy world, predicts ``eps = (x - a x0_nearest) / sqrt(1 - abar)`` at t ~ 0 and so
multiplies a render's distance to its nearest bank image by ~35 (measured: x_s's implied noise has rms 12
instead of 1 starting at t = 0, 1.1 starting at t = 100), which makes ISM and CSM over-saturated on the toy.

Injection: ``grad_injection: sum`` (the default, LucidDreamer's ``SpecifyGradient``) hands g itself to the
backward pass; ``mean`` gives threestudio's g / B, i.e. a 4x weaker step against the regularizers at
LucidDreamer's batch of 4. The view prompts of LucidDreamer interpolate the front / side / back embeddings by
azimuth: ``prompt_processor.view_interpolation: true`` (the prompt processor's job, not the guidance's).

Settings: :class:`dreamengine.config.guidance.ISMConfig`. The deterministic x_t (:meth:`ISMGuidance.interval_points`)
is shared with CSM (csm.py).

Differences from the source: the flip and depth-as-latent augmentations and the "reverse CFG" inversion
(``denoise_guidance_scale > 1``) are not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.config.guidance import ISMConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.protocols import Teacher
from dreamengine.guidance.base import (
    LucidDreamerSchedule,
    ScoreDistillation,
    broadcast_to,
    cfg_convention_b,
    predict_noise_under,
    steps_offset,
    warmup_rate,
)
from dreamengine.guidance.ddim import ddim_invert, ddim_step


def ism_interval(cfg: ISMConfig, step: int) -> int:
    """delta at this step: ``int(delta_t + r (delta_t_start - delta_t))`` when annealing, else delta_t."""
    if not cfg.annealing_intervals:
        return cfg.delta_t
    return int(cfg.delta_t + warmup_rate(step, cfg.warmup_steps) * (cfg.delta_t_start - cfg.delta_t))


class ISMGuidance(LucidDreamerSchedule, ScoreDistillation):
    """Interval score matching with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: ISMConfig, teacher: Teacher, max_steps: int) -> None:
        super().__init__(cfg, teacher, max_steps)
        with torch.no_grad():
            self.inverse_embedding = teacher.embed([cfg.inverse_prompt])  # [1, ...]

    def interval_points(self, z: Tensor, t: Tensor, noise: Tensor, step: int,
                        cameras: Cameras | None) -> tuple[Tensor, Tensor, int]:
        """(x_t, e_s, s): z DDIM-inverted to s = max(t - delta, t_min), the teacher's eps there under the inversion
        prompt, and one more DDIM step of that eps up to t (one t for the batch; t_min = the steps offset)."""
        cfg, teacher = self.cfg, self.teacher
        t_min = steps_offset(teacher)
        s_int = max(int(t[0]) - ism_interval(cfg, step), t_min)
        s = torch.full_like(t, s_int)
        e_inv = self.inverse_embedding.expand(z.shape[0], *self.inverse_embedding.shape[1:])
        x_s = ddim_invert(teacher, z, noise, s_int, e_inv, cfg.xs_delta_t, cfg.xs_inv_steps, cameras,
                          floor=t_min + cfg.inversion_floor)
        e_s = teacher.predict_noise(x_s, s, e_inv, cameras)
        return ddim_step(x_s, e_s, s, t, teacher.alphas_cumprod), e_s, s_int

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = grad_scale sqrt((1 - abar_t) / abar_t) (eps^(x_t) - e_s)."""
        x_t, e_s, s_int = self.interval_points(z, t, noise, step, cameras)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, x_t, t, [prompts.cond, prompts.uncond], cameras)
        eps_hat = cfg_convention_b(eps_cond, eps_uncond, self.cfg.guidance_scale)
        abar = broadcast_to(self.teacher.alphas_cumprod[t], z)
        w = ((1.0 - abar) / abar).sqrt()
        return self.cfg.grad_scale * w * (eps_hat - e_s), {"s": float(s_int)}
