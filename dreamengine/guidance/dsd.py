"""Domain Score Distillation (DreamPolish, Cheng et al., arXiv 2411.01602) -- a RECONSTRUCTION.

No code is public and only the abstract and third-party summaries were reachable (guidance-math.md §5): DSD
guides the texture stage "from both the unconditional image domain and the variational domain", balancing
photorealism against stability. Written here as guidance-math.md's template, which splits SDS's and VSD's
targets (both CFG convention B) at their shared classifier term:

    z_t     = sqrt(abar_t) z + sqrt(1 - abar_t) eps                     t per element (threestudio)
    g       = (1 - abar_t) [ s (eps_c - eps_u)                           classifier (CFG) direction
                             + lambda (eps_u - eps)                      unconditional image domain (SDS's)
                             + (1 - lambda) (eps_u - eps_phi) ]          variational domain (VSD's)

so ``lambda = 1`` is SDS with convention B and ``lambda = 0`` is VSD exactly. ``eps_phi`` is VSD's particle score
model (a camera-conditioned LoRA, or the pixel UNet for teachers without one; vsd.py, particle_score.py), which is
trained in the same call exactly as in VSD. ``lambda`` is ``domain_weight`` (a schedule, 0.5 by default).

Choices made here, not from the paper (check its method section before relying on them): the template itself,
lambda's default and constancy, and VSD's weighting ``1 - abar_t`` and timestep schedule. DreamPolish's geometry
stages (NeRF -> NeuS -> DMTet, the normal-estimator polishing) are not part of the guidance. Injected with
``gradient_to_loss`` (d loss / dz = g / B). Settings: :class:`dreamengine.config.guidance.DSDConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import add_noise, broadcast_to, predict_noise_under
from dreamengine.guidance.particle_score import camera_condition
from dreamengine.guidance.vsd import VSDGuidance
from dreamengine.schedules import schedule_value


class DSDGuidance(VSDGuidance):
    """Domain score distillation: VSD's particle score model, DSD's mix of the two domain terms."""

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = (1 - abar_t) (s (eps_c - eps_u) + lambda (eps_u - eps) + (1 - lambda) (eps_u - eps_phi))."""
        cfg, alphas_cumprod = self.cfg, self.teacher.alphas_cumprod
        lam = schedule_value(cfg.domain_weight, step)
        z_t = add_noise(z, noise, t, alphas_cumprod)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
        eps_particle = self.particle_eps(z_t, t, prompts.plain, camera_condition(cameras).to(z.device))
        w = broadcast_to(1.0 - alphas_cumprod[t], z)
        grad = w * (cfg.guidance_scale * (eps_cond - eps_uncond) + lam * (eps_uncond - noise)
                    + (1.0 - lam) * (eps_uncond - eps_particle))
        return grad, {"domain_weight": lam}
