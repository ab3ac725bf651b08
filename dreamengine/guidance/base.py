"""What every guidance method returns, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dreamengine.errors import ConfigError
from dreamengine.schedules import schedule_value


@dataclass
class GuidanceOut:
    """``loss`` is a scalar whose gradient on the render is the method's gradient; ``terms`` are logs."""

    loss: Tensor
    terms: dict[str, float] = field(default_factory=dict)


def gradient_to_loss(z: Tensor, grad: Tensor) -> Tensor:
    """A scalar whose gradient with respect to ``z`` [B, ...] is exactly ``grad / B``.

    The standard trick (threestudio): ``target = (z - grad).detach()``, ``0.5 * |z - target|^2 / B``.
    Its value, ``0.5 |grad|^2 / B``, is only a log.
    """
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


def add_noise(z: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward diffusion ``sqrt(abar_t) z + sqrt(1 - abar_t) noise`` with per-element t [B]."""
    abar = alphas_cumprod[t].to(z.dtype).view(-1, *([1] * (z.dim() - 1)))
    return abar.sqrt() * z + (1.0 - abar).sqrt() * noise


def sample_timesteps(batch_size: int, min_step: int, max_step: int, generator: torch.Generator | None,
                     device: torch.device | str = "cpu") -> Tensor:
    """Integer timesteps uniform in [min_step, max_step] inclusive, one per batch element, [B] long."""
    t = torch.randint(min_step, max_step + 1, (batch_size,), generator=generator)
    return t.to(device)


def cfg_convention_b(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """diffusers' classifier-free guidance (VSD, ISM, ASD, ...): ``eps_u + s (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def predict_noise_under(teacher: Any, x_t: Tensor, t: Tensor, embeddings: list[Tensor],
                        cameras: Any) -> tuple[Tensor, ...]:
    """One teacher pass scoring x_t [B, ...] at t [B] under each of ``embeddings`` (each [B, ...]).

    The copies are batched into one ``predict_noise`` call; returns one eps [B, ...] per embedding, in order.
    """
    copies = len(embeddings)
    eps = teacher.predict_noise(torch.cat([x_t] * copies), torch.cat([t] * copies), torch.cat(embeddings), cameras)
    return eps.chunk(copies)


def broadcast_to(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample values [B] viewed as [B, 1, 1, ...] to broadcast against ``like`` [B, ...]."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def percent_timestep_range(min_percent: Any, max_percent: Any, step: int, num_train_timesteps: int) -> tuple[int, int]:
    """threestudio's inclusive ``(int(T p_min), int(T p_max))`` at ``step``, p_* schedules, clamped to [0, T-1]."""
    p_min, p_max = schedule_value(min_percent, step), schedule_value(max_percent, step)
    low = int(num_train_timesteps * p_min + 1e-6)  # 1e-6: 0.98 - 0.78 is 0.19999...
    high = int(num_train_timesteps * p_max + 1e-6)
    top = num_train_timesteps - 1
    return max(min(low, top), 0), max(min(high, top), 0)


def warmup_rate(step: int, warmup_steps: int) -> float:
    """LucidDreamer's ``r = 1 - min(step / warmup_steps, 1)``: 1 at the start, 0 once warmed up."""
    if warmup_steps <= 0:
        return 0.0
    return 1.0 - min(step / warmup_steps, 1.0)


def lucid_timestep_range(step: int, warmup_steps: int, num_train_timesteps: int, min_percent: float = 0.02,
                         max_percent: float = 0.5, warmup_max_percent: float = 0.98) -> tuple[int, int]:
    """LucidDreamer's inclusive t range: ``t ~ randint(t_lo, t_hi + int(span * r))`` (upper bound exclusive).

    With T = 1000 and the defaults, ``t_lo = 20``, ``t_hi = 500``, ``span = 480``, so the largest t anneals
    from 979 at step 0 to 499 after ``warmup_steps`` (``r`` from :func:`warmup_rate`).
    """
    low = int(num_train_timesteps * min_percent + 1e-6)
    high = int(num_train_timesteps * max_percent + 1e-6)
    span = int(num_train_timesteps * (warmup_max_percent - max_percent) + 1e-6)
    exclusive_top = high + int(span * warmup_rate(step, warmup_steps))
    return low, max(exclusive_top - 1, low)


def sample_shared_timestep(batch_size: int, min_step: int, max_step: int, generator: torch.Generator | None,
                           device: torch.device | str = "cpu") -> Tensor:
    """One integer timestep uniform in [min_step, max_step] for the whole batch (LucidDreamer), [B] long."""
    t = torch.randint(min_step, max_step + 1, (1,), generator=generator)
    return t.expand(batch_size).to(device)


def offset_noise(shape: torch.Size, offset: float, generator: torch.Generator | None, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> Tensor:
    """LucidDreamer's noise: ``randn(shape) + offset * randn(1, C, 1, 1)`` (the offset is shared by the batch).

    With ``offset == 0`` only the first draw is made, so it equals plain ``randn(shape)``.
    """
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    if offset != 0.0:
        noise = noise + offset * torch.randn((1, shape[1], *([1] * (len(shape) - 2))), generator=generator,
                                             dtype=dtype)
    return noise.to(device)


def validate_lucid_config(cfg: Any) -> None:
    """ConfigError checks shared by configs with LucidDreamer's timestep (and, if present, inversion) keys."""
    if not 0.0 <= cfg.min_step_percent < cfg.max_step_percent <= cfg.warmup_max_step_percent <= 1.0:
        raise ConfigError("guidance.min_step_percent < guidance.max_step_percent <= guidance.warmup_max_step_percent "
                          f"must hold, all in [0, 1]; got {cfg.min_step_percent}, {cfg.max_step_percent}, "
                          f"{cfg.warmup_max_step_percent}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"guidance.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.noise_offset < 0:
        raise ConfigError(f"guidance.noise_offset must be >= 0, got {cfg.noise_offset}")
    for key in ("delta_t", "delta_t_start"):
        if hasattr(cfg, key) and getattr(cfg, key) < 0:
            raise ConfigError(f"guidance.{key} must be >= 0, got {getattr(cfg, key)}")
    for key in ("xs_delta_t", "xs_inv_steps"):
        if hasattr(cfg, key) and getattr(cfg, key) < 1:
            raise ConfigError(f"guidance.{key} must be >= 1, got {getattr(cfg, key)}")


def reject_perp_neg(prompts: Any, method: str) -> None:
    """Raise ConfigError if ``prompts`` (a PromptBatch) carry Perp-Neg negatives, which ``method`` ignores."""
    if getattr(prompts, "neg", None) is not None:
        raise ConfigError(f"guidance.name={method} does not support Perp-Neg: set prompt_processor.perp_neg=false "
                          "or use guidance.name=sds")
