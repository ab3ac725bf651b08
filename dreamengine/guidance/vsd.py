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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.guidance.base import (
    GuidanceOut,
    add_noise,
    broadcast_to,
    cfg_convention_b,
    gradient_to_loss,
    percent_timestep_range,
    predict_noise_under,
    reject_perp_neg,
    sample_timesteps,
)
from dreamengine.guidance.particle_score import build_score_model, camera_condition, training_target
from dreamengine.prompts import PromptBatch
from dreamengine.schedules import validate_schedule
from dreamengine.teachers.base import Teacher
from dreamengine.teachers.stable_diffusion import to_epsilon

CAMERA_CONDITIONS = ("c2w",)
OPTIMIZER_BETAS = (0.9, 0.99)  # threestudio's prolificdreamer optimizer args, shared by every parameter group
OPTIMIZER_EPS = 1e-15


@dataclass
class VSDConfig:
    name: str = "vsd"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    guidance_scale_lora: float = 1.0  # s_lora: CFG of phi between the camera and the zero camera
    min_step_percent: Any = 0.02  # schedule (see dreamengine.schedules): lower bound of t / T
    max_step_percent: Any = field(default_factory=lambda: [5000, 0.98, 0.5, 5001])  # schedule: upper bound of t / T
    camera_condition_type: str = "c2w"  # one of CAMERA_CONDITIONS (threestudio: extrinsics)
    camera_dropout: float = 0.1  # probability that phi trains on the zero camera (threestudio's lora_cfg_training)
    lora_n_timestamp_samples: int = 1  # phi's training batch is the renders repeated this many times
    lora_rank: int = 4  # LoRA rank (diffusers' LoRAAttnProcessor default, as threestudio uses it)
    lora_alpha: float | None = None  # LoRA scale alpha / rank; null: alpha = rank (scale 1, as LoRAAttnProcessor)
    lora_lr: float = 1.0e-4  # AdamW learning rate of the LoRA and its camera MLP (threestudio: guidance lr)
    # AdamW learning rate of the pixel UNet of teachers without a UNet. It starts from scratch and must follow the
    # renders within a few hundred steps: 10x the LoRA's fine-tuning rate (vsd-toy, "a red cube": its denoising
    # loss is 0.03 after 600 steps at 1e-3, still 0.22 at 1e-4)
    pixel_model_lr: float = 1.0e-3
    pixel_model_width: int = 16  # channels of the pixel UNet's first level (a multiple of 8)

    def __post_init__(self) -> None:
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        if self.camera_condition_type not in CAMERA_CONDITIONS:
            raise ConfigError(f"guidance.camera_condition_type must be one of {', '.join(CAMERA_CONDITIONS)} "
                              f"(the flattened camera-to-world matrix); got {self.camera_condition_type!r}")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ConfigError(f"guidance.camera_dropout must be a probability in [0, 1], got {self.camera_dropout}")
        if self.lora_n_timestamp_samples < 1:
            raise ConfigError(f"guidance.lora_n_timestamp_samples must be >= 1, got {self.lora_n_timestamp_samples}")
        if self.lora_rank < 1:
            raise ConfigError(f"guidance.lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"guidance.lora_alpha must be > 0 (or null for alpha = rank), got {self.lora_alpha}")
        for key in ("lora_lr", "pixel_model_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"guidance.{key} must be > 0, got {getattr(self, key)}")
        if self.pixel_model_width < 8 or self.pixel_model_width % 8:
            raise ConfigError(f"guidance.pixel_model_width must be a positive multiple of 8 (GroupNorm groups), "
                              f"got {self.pixel_model_width}")


class VSDGuidance:
    """Variational score distillation. Owns the particle score model phi and its AdamW optimizer."""

    def __init__(self, cfg: VSDConfig, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps
        alpha = float(cfg.lora_alpha) if cfg.lora_alpha is not None else float(cfg.lora_rank)
        self.score_model = build_score_model(teacher, cfg.lora_rank, alpha, cfg.pixel_model_width)
        lr = {"lora": cfg.lora_lr, "pixel": cfg.pixel_model_lr}[self.score_model.kind]
        self.optimizer = torch.optim.AdamW(list(self.score_model.parameters()), lr=lr, betas=OPTIMIZER_BETAS,
                                           eps=OPTIMIZER_EPS)

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step."""
        return percent_timestep_range(self.cfg.min_step_percent, self.cfg.max_step_percent, step,
                                      self.teacher.num_train_timesteps)

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

    def __call__(self, rgb: Tensor, prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B; trains phi."""
        reject_perp_neg(prompts, "vsd")
        if cameras is None or prompts.plain is None:
            raise ValueError("VSD needs the cameras and PromptBatch.plain (the prompt without view phrases): "
                             "both are what its score model is conditioned on")
        cfg, teacher = self.cfg, self.teacher
        z = teacher.encode(rgb.permute(0, 3, 1, 2))
        batch = z.shape[0]
        min_step, max_step = self.timestep_range(step)
        t = sample_timesteps(batch, min_step, max_step, generator, z.device)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        camera = camera_condition(cameras).to(z.device)
        text = prompts.plain
        alphas_cumprod = teacher.alphas_cumprod
        with torch.no_grad():
            z_t = add_noise(z.detach(), noise, t, alphas_cumprod)
            eps_cond, eps_uncond = predict_noise_under(teacher, z_t, t, [prompts.cond, prompts.uncond], cameras)
            eps_pretrained = cfg_convention_b(eps_cond, eps_uncond, cfg.guidance_scale)
            eps_particle = self.particle_eps(z_t, t, text, camera)
            w = broadcast_to(1.0 - alphas_cumprod[t], z)
            grad = torch.nan_to_num(w * (eps_pretrained - eps_particle), nan=0.0, posinf=0.0, neginf=0.0)
        loss = gradient_to_loss(z, grad)
        score_loss, dropped = self.train_score_model(z, text, camera, generator)
        return GuidanceOut(loss=loss, terms={"t_mean": float(t.float().mean()),
                                             "grad_norm": float(grad.norm() / math.sqrt(batch)),
                                             "lora_loss": score_loss, "camera_dropped": dropped})

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """phi's weights and its optimizer state (tensors, numbers and lists only)."""
        return {"score_model": self.score_model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score_model.load_state_dict(state["score_model"])
        self.optimizer.load_state_dict(state["optimizer"])
