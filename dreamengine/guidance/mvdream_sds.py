"""MVDream's score distillation, as MVDream-threestudio implements it (``bytedance/MVDream-threestudio``,
``threestudio/models/guidance/multiview_diffusion_guidance.py`` lines 121-180, defaults from
``configs/mvdream-sd21.yaml``). With a multi-view teacher the n = 4 views of a group are scored jointly.

    t     ~ U{t_min, t_max}, one for the whole batch                              (lines 122-127)
    z_t   = sqrt(abar_t) z + sqrt(1 - abar_t) eps                                 (lines 132-133)
    eps^  = eps_u + s (eps_c - eps_u)                  CFG convention B, s = 50   (line 147)

    recon_loss (the default; MVDream paper Sec. 3.2 and appendix, lines 149-165):
        x0^   = (z_t - sqrt(1 - abar_t) eps^) / sqrt(abar_t)                      x0 with guidance
        x0_c  = (z_t - sqrt(1 - abar_t) eps_c) / sqrt(abar_t)                     x0 without guidance
        f     = (std(x0_c) + 1e-8) / (std(x0^) + 1e-8)       std over each group's n views and all C H W
        x0~   = r f x0^ + (1 - r) x0^                        CFG rescale, r = recon_std_rescale = 0.5
        g     = z - x0~                                      (the reference's 0.5 |z - x0~|^2 / B, differentiated)
    otherwise (lines 167-180): plain SDS with convention B, g = (1 - abar_t)(eps^ - eps).

``eps_u`` is the negative-prompt branch (MVDream-threestudio's prompt processor returns the negative prompt's
embedding as the unconditional one). Schedules: ``min_step_percent`` 0.98 -> 0.02 and ``max_step_percent``
0.98 -> 0.5 linearly over steps 0..8000, so t starts at 980 and ends in [20, 500]. The reference renders at
256 px (the teacher's resolution), batch 8 views at 64 px before step 5000 and 4 at 256 px after (``camera.phases``
in configs/mvdream-sd.yaml). Post-processing: ``nan_to_num`` and the optional clamp (the reference clamps only in
the SDS branch; the default has no clamp). Injection: ``gradient_to_loss`` (d loss / d z = g / B), the same
normalization as the reference's ``0.5 * mse(z, x0~, sum) / B``.

With a single-view teacher the groups have one view each and this is x0-form SDS with per-image CFG rescale.
Settings: :class:`dreamengine.config.guidance.MVDreamSDSConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    broadcast_to,
    cfg_convention_b,
    predict_noise_under,
    predict_x0,
    views_per_group,
)


def rescale_to_group_std(x0: Tensor, x0_reference: Tensor, group: int, rescale: float) -> Tensor:
    """``r f x0 + (1 - r) x0`` with ``f = (std(x0_reference) + 1e-8) / (std(x0) + 1e-8)`` per group of ``group``
    consecutive samples (the std over the group's samples and all their elements); x0, x0_reference [B, ...]."""
    grouped, reference = x0.reshape(-1, group, *x0.shape[1:]), x0_reference.reshape(-1, group, *x0.shape[1:])
    dims = tuple(range(1, grouped.dim()))
    factor = (reference.std(dim=dims) + 1e-8) / (grouped.std(dim=dims) + 1e-8)  # [G]
    factor = factor.repeat_interleave(group).view(-1, *([1] * (x0.dim() - 1)))
    return rescale * factor * x0 + (1.0 - rescale) * x0


class MVDreamSDSGuidance(ScoreDistillation):
    """MVDream's x0-reconstruction SDS with CFG rescale. Stateless apart from its config."""

    shared_timestep = True  # one t per batch (the reference's torch.randint(..., [1]))

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = z - x0~ (recon_loss) or (1 - abar_t)(eps^ - eps), at z_t = q(z, eps, t)."""
        cfg, abar = self.cfg, self.teacher.alphas_cumprod[t].to(z.dtype)
        z_t = add_noise(z, noise, t, self.teacher.alphas_cumprod)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
        eps_hat = cfg_convention_b(eps_cond, eps_uncond, cfg.guidance_scale)
        if not cfg.recon_loss:
            return broadcast_to(1.0 - abar, z) * (eps_hat - noise), {}
        x0 = predict_x0(z_t, eps_hat, abar)
        if cfg.recon_std_rescale > 0:
            x0 = rescale_to_group_std(x0, predict_x0(z_t, eps_cond, abar), views_per_group(self.teacher),
                                      cfg.recon_std_rescale)
        return z - x0, {}


__all__ = ["MVDreamSDSGuidance", "predict_x0", "rescale_to_group_std"]
