"""Sampling a 2D image from a teacher: the DDIM / ancestral loop (Song et al. 2021) over ``Teacher.predict_noise``.

VP3D's first step ("visual prompt"): the teacher samples an image for the prompt, which then conditions the 3D
generation. With the exact toy teacher the loop samples the toy world itself: with ``eta = 1`` (ancestral, DDPM's
posterior variance) and a timestep grid fine enough, the result is a bank image drawn from the prompt's prior.

    x0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t),        eps_hat = eps_u + s (eps_c - eps_u)
    sigma  = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)
    z_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma noise
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.protocols import Teacher


@torch.no_grad()
def ddim_sample(teacher: Teacher, cond: Tensor, uncond: Tensor, shape: tuple[int, ...], num_steps: int = 50,
                guidance_scale: float = 1.0, eta: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """A sample z_0 of shape ``shape`` = [B, ...] in the teacher's diffusion space under embeddings ``cond`` /
    ``uncond`` ([1 or B, ...]); ``guidance_scale`` 1 uses the conditional branch alone (diffusers' convention)."""
    alphas = teacher.alphas_cumprod.double().cpu()
    total = int(teacher.num_train_timesteps)
    timesteps = torch.linspace(total - 1, 0, num_steps).round().long().unique_consecutive()
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    batch = shape[0]
    for index, t in enumerate(timesteps.tolist()):
        a_t = alphas[t]
        a_prev = alphas[timesteps[index + 1]] if index + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        steps = torch.full((batch,), t, dtype=torch.long)
        eps_c = teacher.predict_noise(z.float(), steps, cond.expand(batch, *cond.shape[1:])).double().cpu()
        if guidance_scale != 1.0:
            eps_u = teacher.predict_noise(z.float(), steps, uncond.expand(batch, *uncond.shape[1:])).double().cpu()
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            eps = eps_c
        x0 = (z - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_prev).sqrt()
        noise = torch.randn(shape, generator=generator, dtype=torch.float64)
        z = a_prev.sqrt() * x0 + (1.0 - a_prev - sigma**2).clamp(min=0.0).sqrt() * eps + sigma * noise
    return z.float()


__all__ = ["ddim_sample"]
