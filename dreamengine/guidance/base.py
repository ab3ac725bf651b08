"""What every guidance method returns, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


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
