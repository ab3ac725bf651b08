"""Consistency Distillation Sampling (Consistent3D, Wu et al., CVPR 2024; ``sail-sg/Consistent3D``
threestudio/models/guidance/stable_diffusion_guidance.py ``compute_grad_consistency`` with ``loss_type:
consistency``, configs/consistency-coarse.yaml; guidance-math.md §5).

Variance-exploding form, ``k_t = sqrt((1 - abar_t) / abar_t)``, with a noise eps* drawn once for the run and
shared by every view (``share_noise``):

    t'    = the annealed ``cur_steps`` (sqrt curve 700 -> 100 over 3000 steps), clamped to [t_min, t_max - end_gap]
    t     = clamp(t' + randint(end_gap, end_gap + perturb_factor), t_min, t_max)      per element
    x_t   = z + k_t eps*                          the teacher sees x_t / sqrt(1 + k_t^2) = q(z, eps*, t)
    e1    = eps_c + s (eps_c - eps_u)             at x_t, t (CFG convention A, s: 100 -> 50 over 3000 steps)
    x_t'  = x_t + (k_t' - k_t) e1                 one Euler step of the probability-flow ODE (= a DDIM step)
    e2    = eps_c + s (eps_c - eps_u)             at x_t', t'
    g     = w(t) (e1 - e2)

The source writes the target ``z + [(k_t / k_t') (e1' - e1) + (e2 - e1')]`` and descends on its MSE, so the
gradient on z is minus that bracket; ``e1'`` is e1 after the optional ``recon_std_rescale`` of the clean
estimate ``x0 = x_t - k_t e1`` toward the conditional one's per-sample std (0 by default: then ``e1' = e1`` and
g is as written above). The source's ``+ 1e-9`` in ``k_t / (k_t' + 1e-9)`` is kept.

``eps_u`` is the negative-prompt branch. Defaults are consistency-coarse.yaml's: uniform w, ``grad_clip
[0, 2, 8, 3000]``, t_min 0.1, t_max 0.98. The fixed noise is drawn from the run's generator at the first call
and saved in checkpoints; it is redrawn if the diffusion-space shape changes. Perp-Neg is refused, as in the
source. Injected with ``gradient_to_loss`` (d loss / dz = g / B). Settings:
:class:`dreamengine.config.guidance.CDSConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dreamengine.config.guidance import CDSConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.protocols import Teacher
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    broadcast_to,
    cfg_convention_a,
    predict_noise_under,
    timestep_weight,
)
from dreamengine.schedules import schedule_value


def annealed_target_step(cur_steps: Any, anneal: str, step: int) -> int:
    """t' before clamping: a number, or ``[start_step, start, end, end_step]`` moved along ``sqrt`` (the source's
    ``anneal_t``: ``start + (end - start) sqrt(fraction)``) or ``linear``, truncated to an int."""
    if isinstance(cur_steps, int | float):
        return int(cur_steps)
    start_step, start, end, end_step = (float(v) for v in cur_steps)
    if step <= start_step:
        return int(start)
    if step >= end_step:
        return int(end)
    fraction = (step - start_step) / (end_step - start_step)
    return int(start + (end - start) * (math.sqrt(fraction) if anneal == "sqrt" else fraction))


class CDSGuidance(ScoreDistillation):
    """Consistency distillation sampling with a frozen teacher. State: the shared noise eps*."""

    def __init__(self, cfg: CDSConfig, teacher: Teacher, max_steps: int) -> None:
        super().__init__(cfg, teacher, max_steps)
        self.fixed_noise: Tensor | None = None  # [1, C, H, W] eps*, drawn at the first call

    def step_bounds(self) -> tuple[int, int]:
        """(t_min, t_max) = int(T * min/max_step_percent) (the source's sigma_min / sigma_max)."""
        steps = self.teacher.num_train_timesteps
        return int(steps * self.cfg.min_step_percent + 1e-6), int(steps * self.cfg.max_step_percent + 1e-6)

    def target_step(self, step: int) -> int:
        """t' at this training step, clamped to [t_min, t_max - end_gap]."""
        low, high = self.step_bounds()
        return min(max(annealed_target_step(self.cfg.cur_steps, self.cfg.anneal, step), low),
                   max(high - self.cfg.end_gap, low))

    def draw_timesteps(self, batch: int, step: int, generator: torch.Generator | None, device: torch.device | str,
                       group: int = 1) -> Tensor:
        """t [B] = clamp(t' + randint(end_gap, end_gap + perturb_factor), t_min, t_max), per element (per group of
        ``group`` views for a multi-view teacher)."""
        low, high = self.step_bounds()
        gap = torch.randint(self.cfg.end_gap, self.cfg.end_gap + self.cfg.perturb_factor, (batch // group,),
                            generator=generator)
        return (self.target_step(step) + gap).clamp(low, high).repeat_interleave(group).to(device)

    def draw_noise(self, shape: torch.Size, generator: torch.Generator | None, dtype: torch.dtype,
                   device: torch.device | str) -> Tensor:
        """eps* [B, ...]: the run's fixed noise (drawn once from ``generator``) repeated over the batch, or fresh
        noise without ``share_noise``."""
        if not self.cfg.share_noise:
            return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        if self.fixed_noise is None or self.fixed_noise.shape[1:] != shape[1:]:
            self.fixed_noise = torch.randn((1, *shape[1:]), generator=generator)
        return self.fixed_noise.to(device=device, dtype=dtype).expand(shape)

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = w(t) ((k_t / k_t') (e1 - e1') + (e1' - e2)); e1' = e1 without ``recon_std_rescale``."""
        cfg, teacher, alphas_cumprod = self.cfg, self.teacher, self.teacher.alphas_cumprod
        scale = schedule_value(cfg.guidance_scale, step)
        t_next = torch.full_like(t, self.target_step(step))
        abar, abar_next = broadcast_to(alphas_cumprod[t], z), broadcast_to(alphas_cumprod[t_next], z)
        k, k_next = ((1.0 - abar) / abar).sqrt(), ((1.0 - abar_next) / abar_next).sqrt()
        x_t = add_noise(z, noise, t, alphas_cumprod)  # = (z + k eps*) / sqrt(1 + k^2)
        eps_cond, eps_uncond = predict_noise_under(teacher, x_t, t, [prompts.cond, prompts.uncond], cameras)
        e1 = cfg_convention_a(eps_cond, eps_uncond, scale)
        zs = z + k * noise  # VE point
        e1_used = e1
        if cfg.recon_std_rescale > 0:
            x0, x0_cond = zs - k * e1, zs - k * eps_cond
            factor = (x0_cond.std(dim=(1, 2, 3), keepdim=True) + 1e-8) / (x0.std(dim=(1, 2, 3), keepdim=True) + 1e-8)
            x0 = cfg.recon_std_rescale * x0 * factor + (1.0 - cfg.recon_std_rescale) * x0
            e1_used = (zs - x0) / k
        zs_next = zs + (k_next - k) * e1_used
        x_next = zs_next / (1.0 + k_next**2).sqrt()
        eps_cond_next, eps_uncond_next = predict_noise_under(teacher, x_next, t_next,
                                                              [prompts.cond, prompts.uncond], cameras)
        e2 = cfg_convention_a(eps_cond_next, eps_uncond_next, scale)
        w = broadcast_to(timestep_weight(cfg.weighting, alphas_cumprod[t]), z)
        grad = w * ((k / (k_next + 1e-9)) * (e1 - e1_used) + (e1_used - e2))
        return grad, {"t_next": float(t_next[0]), "guidance_scale": scale}

    # ---- checkpoints: the fixed noise
    def state_dict(self) -> dict[str, Any]:
        return {} if self.fixed_noise is None else {"fixed_noise": self.fixed_noise.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        noise = state.get("fixed_noise")
        self.fixed_noise = None if noise is None else noise.detach().cpu().float()
