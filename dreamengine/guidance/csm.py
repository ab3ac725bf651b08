"""Classifier Score Matching (TV-3DG, arXiv 2410.21299; ``yjhboy/TV-3DG``) -- a RECONSTRUCTION.

Only the abstract and README are public (guidance-math.md §3c). The abstract writes SDS's
``eps^ - eps = (eps_u - eps) + gamma (eps_c - eps_u)``; CSM "removes the difference term" and "uses a
deterministic noise addition process". The README names the module "Visual Prompt Interval Score
Matching" and credits LucidDreamer, so the deterministic x_t is built exactly as in ISM:

    s     = max(t - delta, t_min)                              one t for the whole batch (t_min: steps offset)
    x_s   = DDIM-invert z from ~t_min to s (stride ``xs_delta_t``, ``xs_inv_steps`` steps) with eps(.; e_inv)
    x_t   = ddim_step(x_s, eps(x_s; e_inv, s), s -> t)         deterministic x_t (no fresh noise at t)
    g     = grad_scale * w(t) * gamma * (eps(x_t; e_c, t) - eps(x_t; e_u, t))

Choices made here (not from the paper; check its §III-C before relying on them):

* ``e_u`` is the negative-prompt branch of the PromptBatch (``""`` unless a negative prompt is set), as
  the CFG term of SDS uses it; ``e_inv`` is the embedding of ``inverse_prompt`` (default ``""``).
* ``w(t)``: ``"ism"`` ``sqrt((1 - abar_t) / abar_t)`` (LucidDreamer's, the default), ``"sds"``
  ``1 - abar_t`` or ``"uniform"`` 1.
* Timesteps, interval annealing, offset noise and ``grad_scale = 0.1`` are LucidDreamer's (see ism.py).
* VPCSM, the visual-prompt branch, is this same gradient on a teacher that holds an image prompt: the
  conditional branch ``e_c`` then sees text + image, while the unconditional branch and the inversion (the empty
  prompt) drop both, so ``g = w gamma (eps(x_t; y, v) - eps(x_t; 0))`` (guidance-math.md §3c). On Stable Diffusion
  the image goes in through an IP-Adapter (``teacher.ip_adapter``; StableDiffusionTeacher.image_prompt_rows); in the
  toy world the exact image-conditioned teacher (``toyworld-image``) plays that part. The ``tv3dg`` / ``tv3dg-toy``
  systems take the visual prompt from ``--image`` or sample one for the prompt. The fusion weights of the paper's
  visual-prompt attention and its Semantic-Geometry Calibration loss are not public and are left out.

Injected as ISM's (``grad_injection: sum``, d loss / dz = g, LucidDreamer's ``SpecifyGradient``).
Settings: :class:`dreamengine.config.guidance.CSMConfig`;
the deterministic x_t is :meth:`ISMGuidance.interval_points`, which this class inherits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import broadcast_to, predict_noise_under
from dreamengine.guidance.ism import ISMGuidance


def csm_weight(weighting: str, abar: Tensor) -> Tensor:
    """w(t) for alphas_cumprod values ``abar`` (any shape)."""
    if weighting == "ism":
        return ((1.0 - abar) / abar).sqrt()
    if weighting == "sds":
        return 1.0 - abar
    return torch.ones_like(abar)


class CSMGuidance(ISMGuidance):
    """Classifier score matching at ISM's DDIM-inverted x_t. Stateless apart from its config."""

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = grad_scale w(t) gamma (eps(x_t; e_c) - eps(x_t; e_u))."""
        cfg = self.cfg
        x_t, _, s_int = self.interval_points(z, t, noise, step, cameras)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, x_t, t, [prompts.cond, prompts.uncond], cameras)
        w = csm_weight(cfg.weighting, broadcast_to(self.teacher.alphas_cumprod[t], z))
        return cfg.grad_scale * w * cfg.guidance_scale * (eps_cond - eps_uncond), {"s": float(s_int)}
