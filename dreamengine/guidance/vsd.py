"""Variational Score Distillation (ProlificDreamer), as threestudio implements it
(``threestudio/models/guidance/stable_diffusion_vsd_guidance.py``, ``configs/prolificdreamer.yaml``;
guidance-math.md §2).

The same z_t (t per batch element) is scored by the frozen teacher and by a particle score model phi
(particle_score.py: a LoRA on the teacher's UNet, or a small pixel UNet for teachers without one):

    z_t     = sqrt(abar_t) z + sqrt(1 - abar_t) eps                    eps ~ N(0, I)
    eps_pre = eps_u + s (eps_c - eps_u)                                 teacher, view-dependent prompts, convention B
    eps_phi = phi(z_t; y, 0) + s_lora (phi(z_t; y, c) - phi(z_t; y, 0)) view-INDEPENDENT prompt y, camera c
    g       = (1 - abar_t) (eps_pre - eps_phi)

``eps_u`` is the negative-prompt branch, ``c`` the flattened c2w and ``0`` the zero camera (the LoRA's
"uncond"). phi's outputs are converted to eps for v-prediction models (``eps = sqrt(a) v + sqrt(1 - a) z_t``).
With ``s_lora = 1`` (the default) only ``phi(z_t; y, c)`` is evaluated. ``g`` is cleaned with
``nan_to_num`` and injected with ``gradient_to_loss`` (d loss / dz = g / B).

In the same call, after g is computed, phi takes one AdamW step on the detached latents (its own optimizer,
owned here, so the trainer needs no change):

    t' ~ U{0, ..., T-1},  eps' ~ N(0, I),  x = q(z.detach(), eps', t')   (batch repeated n_t times)
    c' = 0 with probability ``camera_dropout`` (per sample), else c
    L_phi = mean((phi(x; y, c', t') - target)^2),  target = eps' (eps model) | sqrt(a) eps' - sqrt(1-a) z (v model)

Random draws, all from the ``generator`` argument, in this order: t [B], eps [B, ...], t' [n_t B],
eps' [n_t B, ...], dropout uniforms [n_t B]. ``state_dict`` holds phi's weights and its optimizer state, so a
resumed run continues exactly. The batch may hold renders of several particles (scenes): phi is shared.

Differences from threestudio: the camera is dropped per sample rather than for the whole batch at once;
the camera MLP's output layer starts at zero (threestudio: random), so phi starts as the teacher itself;
one UNet carries both the teacher and the LoRA (threestudio's single-model case; ProlificDreamer's paper and
threestudio's default config put the LoRA on SD 2.1, a v-prediction model). Perp-Neg is not supported.
Settings: :class:`dreamengine.config.guidance.VSDConfig`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamengine.config.guidance import VSDConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.protocols import Teacher
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import (
    ScoreDistillation,
    add_noise,
    broadcast_to,
    cfg_convention_b,
    predict_noise_under,
    views_per_group,
)
from dreamengine.guidance.particle_score import build_score_model, camera_condition, training_target
from dreamengine.teachers.stable_diffusion import to_epsilon

OPTIMIZER_BETAS = (0.9, 0.99)  # threestudio's prolificdreamer optimizer args, shared by every parameter group
OPTIMIZER_EPS = 1e-15


class VSDGuidance(ScoreDistillation):
    """Variational score distillation. Owns the particle score model phi and its AdamW optimizer."""

    def __init__(self, cfg: VSDConfig, teacher: Teacher, max_steps: int) -> None:
        if views_per_group(teacher) > 1:
            raise ConfigError(f"guidance.name={cfg.name} does not work with a multi-view teacher: its particle "
                              "score model (a LoRA with its own camera embedding, or a pixel UNet) scores one view at "
                              "a time, so eps_teacher - eps_phi would compare a joint score with a single-view one. "
                              "Use guidance.name=mvdream-sds or sds (or a single-view teacher for VSD)")
        super().__init__(cfg, teacher, max_steps)
        alpha = float(cfg.lora_alpha) if cfg.lora_alpha is not None else float(cfg.lora_rank)
        self.score_model = build_score_model(teacher, cfg.lora_rank, alpha, cfg.pixel_model_width)
        lr = {"lora": cfg.lora_lr, "pixel": cfg.pixel_model_lr}[self.score_model.kind]
        self.optimizer = torch.optim.AdamW(list(self.score_model.parameters()), lr=lr, betas=OPTIMIZER_BETAS,
                                           eps=OPTIMIZER_EPS)

    def particle_eps(self, z_t: Tensor, t: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """eps_phi [B, ...] with the LoRA's CFG ``phi(0) + s_lora (phi(c) - phi(0))``; one pass when s_lora == 1."""
        scale, abar = self.cfg.guidance_scale_lora, self.teacher.alphas_cumprod
        kind = self.score_model.prediction_type
        if scale == 1.0:
            return to_epsilon(self.score_model(z_t, t, text, camera), z_t, abar[t], kind)
        both = torch.cat([z_t, z_t])
        out = self.score_model(both, torch.cat([t, t]), torch.cat([text, text]),
                               torch.cat([camera, torch.zeros_like(camera)]))
        eps_camera, eps_zero = to_epsilon(out, both, abar[torch.cat([t, t])], kind).chunk(2)
        return cfg_convention_b(eps_camera, eps_zero, scale)

    def train_score_model(self, z: Tensor, text: Tensor, camera: Tensor,
                          generator: torch.Generator | None) -> tuple[float, float]:
        """One AdamW step of phi on detached latents z [B, ...]. Returns (loss, fraction of zeroed cameras).

        A non-finite loss skips the step (the loss is still returned, so the log shows it)."""
        repeats = self.cfg.lora_n_timestamp_samples
        z = z.detach().repeat(repeats, *([1] * (z.dim() - 1)))
        text = text.repeat(repeats, *([1] * (text.dim() - 1)))
        camera = camera.repeat(repeats, 1)
        count, num_t = z.shape[0], self.teacher.num_train_timesteps
        t = torch.randint(0, num_t, (count,), generator=generator).to(z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        dropped = (torch.rand((count,), generator=generator) < self.cfg.camera_dropout).to(z.device)
        camera = torch.where(dropped[:, None], torch.zeros_like(camera), camera)
        abar = self.teacher.alphas_cumprod[t]
        x = add_noise(z, noise, t, self.teacher.alphas_cumprod)
        target = training_target(self.score_model.prediction_type, z, noise, abar)
        with torch.enable_grad():
            prediction = self.score_model(x, t, text, camera)
            loss = F.mse_loss(prediction.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        if bool(torch.isfinite(loss)):
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), float(dropped.float().mean())

    def check_inputs(self, prompts: PromptBatch, cameras: Cameras | None) -> None:
        super().check_inputs(prompts, cameras)
        if cameras is None or prompts.plain is None:
            raise ValueError("VSD needs the cameras and PromptBatch.plain (the prompt without view phrases): "
                             "both are what its score model is conditioned on")

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """g = (1 - abar_t) (eps_pre - eps_phi) at the same z_t."""
        alphas_cumprod = self.teacher.alphas_cumprod
        z_t = add_noise(z, noise, t, alphas_cumprod)
        eps_cond, eps_uncond = predict_noise_under(self.teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
        eps_pretrained = cfg_convention_b(eps_cond, eps_uncond, self.cfg.guidance_scale)
        eps_particle = self.particle_eps(z_t, t, prompts.plain, camera_condition(cameras).to(z.device))
        w = broadcast_to(1.0 - alphas_cumprod[t], z)
        return w * (eps_pretrained - eps_particle), {}

    def after_gradient(self, z: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                       generator: torch.Generator | None) -> dict[str, float]:
        """phi's training step on the detached renders (see the module docstring)."""
        score_loss, dropped = self.train_score_model(z, prompts.plain, camera_condition(cameras).to(z.device),
                                                     generator)
        return {"lora_loss": score_loss, "camera_dropped": dropped}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """phi's AdamW (stepped in :meth:`train_score_model`)."""
        return [self.optimizer]

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """phi's weights and its optimizer state (tensors, numbers and lists only)."""
        return {"score_model": self.score_model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score_model.load_state_dict(state["score_model"])
        self.optimizer.load_state_dict(state["optimizer"])
