"""Score Distillation Sampling (DreamFusion), as threestudio implements it (guidance-math.md §1).

    z_t   = sqrt(abar_t) z + sqrt(1 - abar_t) eps                      eps ~ N(0, I), t per element
    eps^  = eps_c + s (eps_c - eps_u)                                  CFG convention A (threestudio)
    g     = w(t) (eps^ - eps)        w: "sds" 1 - abar_t | "uniform" 1 | "fantasia3d" sqrt(abar_t)(1 - abar_t)

``eps_u`` is the negative-prompt branch. When the prompts carry Perp-Neg negatives (``prompts.neg``), eps^
is Perp-Neg's combination instead, which uses convention B (``guidance/perp_neg.py``, guidance-math.md §6).
``g`` is cleaned with ``nan_to_num``, optionally clamped to ``[-c, c]`` with ``c = grad_clip(step)``, and
injected with ``gradient_to_loss`` so that d loss / d z == g / B exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import GuidanceOut, add_noise, gradient_to_loss, predict_noise_under, sample_timesteps
from dreamengine.guidance.perp_neg import perp_neg_guidance
from dreamengine.prompts import PromptBatch
from dreamengine.schedules import schedule_value, validate_schedule
from dreamengine.teachers.base import Teacher

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


@dataclass
class SDSConfig:
    name: str = "sds"
    guidance_scale: float = 100.0  # s in eps_c + s (eps_c - eps_u)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = 0.02  # schedule (see dreamengine.schedules): lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    sqrt_anneal: bool = False  # HiFA: deterministic t = T (p_max - (p_max - p_min) sqrt(step / max_steps))
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


def timestep_weight(weighting: str, abar: Tensor) -> Tensor:
    """w(t) for the given alphas_cumprod values [B]."""
    if weighting == "sds":
        return 1.0 - abar
    if weighting == "uniform":
        return torch.ones_like(abar)
    return abar.sqrt() * (1.0 - abar)


def cfg_convention_a(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """threestudio's classifier-free guidance: ``eps_c + s (eps_c - eps_u)``."""
    return eps_cond + scale * (eps_cond - eps_uncond)


class SDSGuidance:
    """Score distillation with a frozen teacher. Stateless apart from its config."""

    def __init__(self, cfg: SDSConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        num_t = self.teacher.num_train_timesteps
        p_min = schedule_value(self.cfg.min_step_percent, step)
        p_max = schedule_value(self.cfg.max_step_percent, step)
        if self.cfg.sqrt_anneal:
            p = p_max - (p_max - p_min) * math.sqrt(min(step / max(self.max_steps, 1), 1.0))
            p_min = p_max = p
        low, high = int(num_t * p_min + 1e-6), int(num_t * p_max + 1e-6)  # 1e-6: 0.98 - 0.78 is 0.19999...
        return max(min(low, num_t - 1), 0), max(min(high, num_t - 1), 0)

    def perp_neg_eps(self, z_t: Tensor, t: Tensor, prompts: PromptBatch, cameras: Cameras) -> Tensor:
        """Perp-Neg's eps^ [B, ...]: one teacher call on [positive, uncond, K negatives] x B (convention B)."""
        batch, negatives = z_t.shape[0], prompts.neg.shape[1]
        copies = 2 + negatives
        neg = prompts.neg.transpose(0, 1).reshape(negatives * batch, *prompts.neg.shape[2:])  # k-major
        eps = self.teacher.predict_noise(z_t.repeat(copies, *([1] * (z_t.dim() - 1))), t.repeat(copies),
                                         torch.cat([prompts.cond, prompts.uncond, neg]), cameras)
        eps_neg = eps[2 * batch:].reshape(negatives, batch, *z_t.shape[1:]).transpose(0, 1)  # [B, K, ...]
        return perp_neg_guidance(eps[:batch], eps[batch:2 * batch], eps_neg, prompts.neg_weights,
                                 self.cfg.guidance_scale)

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B."""
        z = self.teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        min_step, max_step = self.timestep_range(step)
        t = sample_timesteps(batch, min_step, max_step, generator, z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        alphas_cumprod = self.teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            if prompts.neg is None:
                eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond],
                                                           cameras)
                eps_hat = cfg_convention_a(eps_cond, eps_uncond, self.cfg.guidance_scale)
            else:
                eps_hat = self.perp_neg_eps(z_t, t, prompts, cameras)
            w = timestep_weight(self.cfg.weighting, alphas_cumprod[t].to(z.dtype)).view(-1, *([1] * (z.dim() - 1)))
            grad = torch.nan_to_num(w * (eps_hat - noise), nan=0.0, posinf=0.0, neginf=0.0)
            if self.cfg.grad_clip is not None:
                clip = schedule_value(self.cfg.grad_clip, step)
                grad = grad.clamp(-clip, clip)
        loss = gradient_to_loss(z, grad)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch))})
