"""Deterministic DDIM (eta = 0) moves between noise levels, used by ISM, CSM and their tests.

A DDIM step reads the clean estimate off the current point and re-noises it with the *same* eps
(guidance-math.md §3a):

    x0  = (x_a - sqrt(1 - abar_a) eps) / sqrt(abar_a)
    x_b = sqrt(abar_b) x0 + sqrt(1 - abar_b) eps

The same formula moves up (t_b > t_a: DDIM inversion, as LucidDreamer adds noise) and down (t_b < t_a:
ordinary DDIM sampling). With eps held fixed a step a -> b followed by b -> a is the identity; with eps
re-evaluated at each point it is a discretisation of the probability-flow ODE, so inversion followed by
denoising returns the start up to a discretisation error that shrinks with the stride.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import Teacher
from dreamengine.guidance.base import add_noise, broadcast_to, predict_x0


def ddim_step(x_a: Tensor, eps: Tensor, t_a: Tensor, t_b: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Move x_a [B, ...] at integer timesteps t_a [B] to t_b [B] along the DDIM path of ``eps`` [B, ...]."""
    x0 = predict_x0(x_a, eps, alphas_cumprod[t_a])
    abar_b = broadcast_to(alphas_cumprod[t_b], x_a)
    return abar_b.sqrt() * x0 + (1.0 - abar_b).sqrt() * eps


@torch.no_grad()
def ddim_walk(teacher: Teacher, x: Tensor, t_from: int, t_to: int, stride: int, embeddings: Tensor,
              cameras: Cameras | None = None) -> Tensor:
    """Move x [B, ...] from noise level ``t_from`` to ``t_to`` (either direction) in DDIM steps of at most
    ``stride``, each using the teacher's eps at the current point under ``embeddings`` [B, ...].

    Going up this is LucidDreamer's inversion loop: ``next = min(cur + stride, t_to)``; going down it is
    DDIM sampling with ``next = max(cur - stride, t_to)``.
    """
    if stride < 1:
        raise ValueError(f"DDIM stride must be >= 1, got {stride}")
    batch = x.shape[0]
    cur = t_from
    while cur != t_to:
        nxt = min(cur + stride, t_to) if t_to > cur else max(cur - stride, t_to)
        t_cur = torch.full((batch,), cur, dtype=torch.long, device=x.device)
        t_nxt = torch.full((batch,), nxt, dtype=torch.long, device=x.device)
        eps = teacher.predict_noise(x, t_cur, embeddings, cameras)
        x = ddim_step(x, eps, t_cur, t_nxt, teacher.alphas_cumprod)
        cur = nxt
    return x


@torch.no_grad()
def ddim_invert(teacher: Teacher, z: Tensor, noise: Tensor, t_to: int, embeddings: Tensor, stride: int,
                num_steps: int, cameras: Cameras | None = None, floor: int = 0) -> Tensor:
    """LucidDreamer's x_s: noise the clean z [B, ...] to ``start = max(t_to - stride * num_steps, floor)`` with
    ``noise`` (a tiny amount at the floor), then DDIM-invert it to ``t_to`` in at most ``num_steps`` steps.

    ``floor`` is the smallest timestep, LucidDreamer's ``timesteps[0]`` = the scheduler's ``steps_offset``."""
    start = max(t_to - stride * num_steps, floor)
    t_start = torch.full((z.shape[0],), start, dtype=torch.long, device=z.device)
    x = add_noise(z, noise, t_start, teacher.alphas_cumprod)
    return ddim_walk(teacher, x, start, t_to, stride, embeddings, cameras)
