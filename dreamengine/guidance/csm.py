"""Classifier Score Matching (TV-3DG, arXiv 2410.21299; ``yjhboy/TV-3DG``) -- a RECONSTRUCTION.

Only the abstract and README are public (guidance-math.md §3c). The abstract writes SDS's
``eps^ - eps = (eps_u - eps) + gamma (eps_c - eps_u)``; CSM "removes the difference term" and "uses a
deterministic noise addition process". The README names the module "Visual Prompt Interval Score
Matching" and credits LucidDreamer, so the deterministic x_t is built exactly as in ISM:

    s     = max(t - delta, 0)                                  one t for the whole batch
    x_s   = DDIM-invert z from ~0 to s (stride ``xs_delta_t``, ``xs_inv_steps`` steps) with eps(.; e_inv)
    x_t   = ddim_step(x_s, eps(x_s; e_inv, s), s -> t)         deterministic x_t (no fresh noise at t)
    g     = grad_scale * w(t) * gamma * (eps(x_t; e_c, t) - eps(x_t; e_u, t))

Choices made here (not from the paper; check its §III-C before relying on them):

* ``e_u`` is the negative-prompt branch of the PromptBatch (``""`` unless a negative prompt is set), as
  the CFG term of SDS uses it; ``e_inv`` is the embedding of ``inverse_prompt`` (default ``""``).
* ``w(t)``: ``"ism"`` ``sqrt((1 - abar_t) / abar_t)`` (LucidDreamer's, the default), ``"sds"``
  ``1 - abar_t`` or ``"uniform"`` 1.
* Timesteps, interval annealing, offset noise and ``grad_scale = 0.1`` are LucidDreamer's (see ism.py).
* The visual-prompt (IP-Adapter) branch of VPCSM and the Semantic-Geometry Calibration loss are left out.

Injected with ``gradient_to_loss`` (d loss / dz = g / B).
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
    broadcast_to,
    gradient_to_loss,
    lucid_timestep_range,
    offset_noise,
    predict_noise_under,
    reject_perp_neg,
    sample_shared_timestep,
    validate_lucid_config,
)
from dreamengine.guidance.ddim import ddim_invert, ddim_step
from dreamengine.guidance.ism import ism_interval
from dreamengine.prompts import PromptBatch
from dreamengine.teachers.base import Teacher

CSM_WEIGHTINGS = ("ism", "sds", "uniform")


@dataclass
class CSMConfig:
    name: str = "csm"
    guidance_scale: float = 7.5  # gamma, the weight of the classifier term
    weighting: str = "ism"  # one of CSM_WEIGHTINGS
    grad_scale: float = 0.1  # g is multiplied by this (LucidDreamer's lambda_guidance)
    delta_t: int = 80  # final interval t - s of the inversion
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
        if self.weighting not in CSM_WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(CSM_WEIGHTINGS)}; got {self.weighting!r}")
        validate_lucid_config(self)


def csm_weight(weighting: str, abar: Tensor) -> Tensor:
    """w(t) for alphas_cumprod values ``abar`` (any shape)."""
    if weighting == "ism":
        return ((1.0 - abar) / abar).sqrt()
    if weighting == "sds":
        return 1.0 - abar
    return torch.ones_like(abar)


class CSMGuidance:
    """Classifier score matching at a DDIM-inverted x_t. Stateless apart from its config."""

    def __init__(self, cfg: CSMConfig, teacher: Teacher, max_steps: int) -> None:
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
        reject_perp_neg(prompts, "csm")
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
            x_t = ddim_step(x_s, teacher.predict_noise(x_s, s, e_inv, cameras), s, t, alphas_cumprod)
            eps_cond, eps_uncond = predict_noise_under(teacher, x_t, t, [prompts.cond, prompts.uncond], cameras)
            w = csm_weight(cfg.weighting, broadcast_to(alphas_cumprod[t], z))
            grad = cfg.grad_scale * w * cfg.guidance_scale * (eps_cond - eps_uncond)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t_int), "s": float(s_int),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
