"""Perp-Neg (Armandpour et al. 2023) as threestudio combines it (guidance-math.md §6), convention B:

    e_pos = eps_pos - eps_u,   e_i = eps_neg_i - eps_u
    eps^  = eps_u + s (e_pos + sum_i w_i perp(e_i, e_pos)),   perp(x, y) = x - <x, y> / max(|y|^2, 1e-6) y

with inner products per sample. The weights w_i come from the prompt processor (negative by default, so
each negative view's component orthogonal to the positive direction is pushed away from).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import Teacher


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of x [B, ...] orthogonal to y [B, ...], per sample: x - <x, y> / max(|y|^2, 1e-6) y."""
    dims = list(range(1, x.dim()))
    dot = (x * y).sum(dim=dims, keepdim=True)
    norm2 = (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return x - dot / norm2 * y


def perpendicular_sum(eps_pos: Tensor, eps_uncond: Tensor, eps_neg: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i perp(eps_neg_i - eps_u, eps_pos - eps_u)`` [B, ...]: Perp-Neg's negative part, from eps_pos,
    eps_uncond [B, ...], eps_neg [B, K, ...] and weights [B, K]."""
    e_pos = eps_pos - eps_uncond
    total = torch.zeros_like(e_pos)
    for k in range(eps_neg.shape[1]):
        w = weights[:, k].to(e_pos.dtype).view(-1, *([1] * (e_pos.dim() - 1)))
        total = total + w * perpendicular_component(eps_neg[:, k] - eps_uncond, e_pos)
    return total


def perp_neg_guidance(eps_pos: Tensor, eps_uncond: Tensor, eps_neg: Tensor, weights: Tensor,
                      scale: float) -> Tensor:
    """eps^ [B, ...] from eps_pos, eps_uncond [B, ...], eps_neg [B, K, ...] and weights [B, K]."""
    e_pos = eps_pos - eps_uncond
    return eps_uncond + scale * (e_pos + perpendicular_sum(eps_pos, eps_uncond, eps_neg, weights))


def predict_with_negative_views(teacher: Teacher, z_t: Tensor, t: Tensor, embeddings: list[Tensor], neg: Tensor,
                                cameras: Cameras | None) -> tuple[list[Tensor], Tensor]:
    """One batched teacher call at z_t [B, ...]: eps [B, ...] under each of ``embeddings`` (each [B, ...]), and
    eps [B, K, ...] under each of the K negative-view embeddings ``neg`` [B, K, ...] (Perp-Neg)."""
    batch, negatives = z_t.shape[0], neg.shape[1]
    copies = len(embeddings) + negatives
    flat_neg = neg.transpose(0, 1).reshape(negatives * batch, *neg.shape[2:])  # k-major
    eps = teacher.predict_noise(z_t.repeat(copies, *([1] * (z_t.dim() - 1))), t.repeat(copies),
                                torch.cat([*embeddings, flat_neg]), cameras)
    head = len(embeddings) * batch
    eps_neg = eps[head:].reshape(negatives, batch, *z_t.shape[1:]).transpose(0, 1)
    return list(eps[:head].chunk(len(embeddings))), eps_neg
