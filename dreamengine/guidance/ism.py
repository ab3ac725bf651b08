"""Interval Score Matching (LucidDreamer, ``EnVision-Research/LucidDreamer`` guidance/sd_utils.py;
guidance-math.md §3a).

    s     = max(t - delta, 0)                                  one t for the whole batch
    x_s   = DDIM-invert z from ~0 to s in steps of ``xs_delta_t`` (at most ``xs_inv_steps``), eps(.; e_inv)
    e_s   = eps(x_s; e_inv, s)                                 the target
    x_t   = ddim_step(x_s, e_s, s -> t)                        deterministic x_t
    eps^  = eps_u + s_cfg (eps_c - eps_u)                      CFG convention B, at x_t
    g     = grad_scale * sqrt((1 - abar_t) / abar_t) * (eps^ - e_s)

``e_inv`` is the embedding of ``inverse_prompt`` ("" by default: the true unconditional model, *not* the
negative prompt; for the toy teacher "" is the whole-world prior). ``eps_u`` is the negative-prompt branch.

Schedules (LucidDreamer): ``t ~ randint(20, 500 + int(480 r))`` (upper bound exclusive) with
``r = 1 - min(step / warmup_steps, 1)``; ``delta = int(delta_t + r (delta_t_start - delta_t))`` when
``annealing_intervals``. The noise that brings z to the start of the inversion is
``randn + noise_offset * randn(1, C, 1, 1)``.

Differences from the source: the gradient is injected with ``gradient_to_loss`` (d loss / dz = g / B)
where LucidDreamer's ``SpecifyGradient`` gives g; the flip and depth-as-latent augmentations and the
"reverse CFG" inversion (``denoise_guidance_scale > 1``) are not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.guidance.base import (
    GuidanceOut,
    broadcast_to,
    cfg_convention_b,
    gradient_to_loss,
    lucid_timestep_range,
    offset_noise,
    predict_noise_under,
    reject_perp_neg,
    sample_shared_timestep,
    validate_lucid_config,
    warmup_rate,
)
from dreamengine.guidance.ddim import ddim_invert, ddim_step
from dreamengine.prompts import PromptBatch
from dreamengine.teachers.base import Teacher


@dataclass
class ISMConfig:
    name: str = "ism"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    grad_scale: float = 0.1  # lambda_guidance: g is multiplied by this
    delta_t: int = 80  # final interval t - s (LucidDreamer's default; its example configs use 50)
    delta_t_start: int = 100  # interval at step 0 when annealing_intervals
    annealing_intervals: bool = True  # anneal the interval from delta_t_start to delta_t with the warm-up rate
    xs_delta_t: int = 200  # stride of the inversion from ~0 to s
    xs_inv_steps: int = 5  # number of inversion steps to s
    inverse_prompt: str = ""  # prompt of the inversion ("" = unconditional)
    warmup_steps: int = 1500  # steps over which the largest t anneals from 979 to 499
    min_step_percent: float = 0.02  # lower bound of t / T
    max_step_percent: float = 0.5  # upper bound of t / T after the warm-up
    warmup_max_step_percent: float = 0.98  # upper bound of t / T at step 0
    noise_offset: float = 0.1  # offset-noise amplitude of the start noise

    def __post_init__(self) -> None:
        validate_lucid_config(self)


def ism_interval(cfg: ISMConfig, step: int) -> int:
    """delta at this step: ``int(delta_t + r (delta_t_start - delta_t))`` when annealing, else delta_t."""
    if not cfg.annealing_intervals:
        return cfg.delta_t
    return int(cfg.delta_t + warmup_rate(step, cfg.warmup_steps) * (cfg.delta_t_start - cfg.delta_t))


class ISMGuidance:
    """Interval score matching with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: ISMConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps
        with torch.no_grad():
            self.inverse_embedding = teacher.embed([cfg.inverse_prompt])  # [1, ...]

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        cfg = self.cfg
        return lucid_timestep_range(step, cfg.warmup_steps, self.teacher.num_train_timesteps, cfg.min_step_percent,
                                    cfg.max_step_percent, cfg.warmup_max_step_percent)

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B."""
        reject_perp_neg(prompts, "ism")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        t = sample_shared_timestep(batch, *self.timestep_range(step), generator, z.device)
        noise = offset_noise(z.shape, cfg.noise_offset, generator, z.dtype, z.device)
        t_int = int(t[0])
        s_int = max(t_int - ism_interval(cfg, step), 0)
        s = torch.full_like(t, s_int)
        e_inv = self.inverse_embedding.expand(batch, *self.inverse_embedding.shape[1:])
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            x_s = ddim_invert(teacher, z.detach(), noise, s_int, e_inv, cfg.xs_delta_t, cfg.xs_inv_steps, cameras)
            e_s = teacher.predict_noise(x_s, s, e_inv, cameras)
            x_t = ddim_step(x_s, e_s, s, t, alphas_cumprod)
            eps_cond, eps_uncond = predict_noise_under(teacher, x_t, t, [prompts.cond, prompts.uncond], cameras)
            eps_hat = cfg_convention_b(eps_cond, eps_uncond, cfg.guidance_scale)
            abar = broadcast_to(alphas_cumprod[t], z)
            w = ((1.0 - abar) / abar).sqrt()
            grad = torch.nan_to_num(cfg.grad_scale * w * (eps_hat - e_s), nan=0.0, posinf=0.0, neginf=0.0)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t_int), "s": float(s_int),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
