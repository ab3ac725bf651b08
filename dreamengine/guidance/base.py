"""The skeleton every guidance method shares, and the pieces of their formulas (guidance-math.md §0).

One call of a guidance method, :meth:`ScoreDistillation.__call__`, in order:

1. check that the method can use the conditioning (Perp-Neg negatives, cameras);
2. ``z = teacher.encode(rgb)`` (differentiable: the gradient reaches the render through it);
3. :meth:`~ScoreDistillation.draw_timesteps`: the timesteps ``t`` [B] (per element, or one shared by the batch for
   the LucidDreamer family) from the method's range at this step, then :meth:`~ScoreDistillation.draw_noise`: the
   noise ``eps`` (with LucidDreamer's offset noise where configured; CDS's fixed noise). With a multi-view teacher
   (``teacher.views_per_group = n > 1``) "per element" is per group of n views: the views of one object are
   denoised jointly, at one noise level (:func:`views_per_group`);
4. under ``no_grad``, the method's own :meth:`~ScoreDistillation.gradient` computes ``g`` (the teacher passes,
   weighting and the formula: the only part that differs between methods);
5. :meth:`~ScoreDistillation.clean`: ``nan_to_num``, then the optional element-wise clamp ``grad_clip(step)``
   (``grad_nonfinite``, the fraction of ``g`` that was NaN or infinite, is logged: the trainer counts a step
   whose ``g`` was mostly non-finite as a failed step rather than a zero gradient);
6. injection: ``loss = gradient_to_loss(z, g, reduction)``, so d loss / d z == g / B exactly (``mean``,
   threestudio's MSE trick) or g (``sum``, LucidDreamer's and PlacidDreamer's ``SpecifyGradient``); the
   reduction is reported in ``GuidanceOut.reduction`` so the trainer can scale particles correctly;
7. :meth:`~ScoreDistillation.after_gradient` (VSD trains its score model here) and the logged terms.

All random numbers come from the ``generator`` argument, in the order above, then whatever ``gradient`` and
``after_gradient`` draw, so a step can be reproduced from the generator's state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.protocols import GuidanceOut, Teacher
from dreamengine.errors import ConfigError
from dreamengine.schedules import schedule_value

__all__ = ["REDUCTIONS", "GuidanceOut", "LucidDreamerSchedule", "ScoreDistillation", "add_noise", "broadcast_to",
           "cfg_convention_a", "cfg_convention_b", "gradient_to_loss", "lucid_timestep_range", "offset_noise",
           "percent_timestep_range", "predict_noise_under", "sample_shared_timestep", "sample_timesteps",
           "steps_offset", "timestep_weight", "views_per_group", "warmup_rate"]


# --------------------------------------------------------------------------------------------- formula pieces
REDUCTIONS = ("mean", "sum")


def gradient_to_loss(z: Tensor, grad: Tensor, reduction: str = "mean") -> Tensor:
    """A scalar whose gradient with respect to ``z`` [B, ...] is exactly ``grad / B`` (``mean``) or ``grad``
    (``sum``).

    The standard trick (threestudio): ``target = (z - grad).detach()``, ``0.5 * |z - target|^2 / B``.
    Its value, ``0.5 |grad|^2 / B``, is only a log. ``sum`` drops the ``/ B``: the gradient of LucidDreamer's
    and PlacidDreamer's ``SpecifyGradient``, which hands ``grad`` itself to the backward pass.
    """
    target = (z - grad).detach()
    loss = 0.5 * ((z - target) ** 2).sum()
    return loss / z.shape[0] if reduction == "mean" else loss


def add_noise(z: Tensor, noise: Tensor, t: Int[Tensor, " B"], alphas_cumprod: Float[Tensor, " T"]) -> Tensor:
    """Forward diffusion ``sqrt(abar_t) z + sqrt(1 - abar_t) noise`` with per-element t [B]."""
    abar = alphas_cumprod[t].to(z.dtype).view(-1, *([1] * (z.dim() - 1)))
    return abar.sqrt() * z + (1.0 - abar).sqrt() * noise


def predict_x0(z_t: Tensor, eps: Tensor, abar: Float[Tensor, " B"]) -> Tensor:
    """The clean sample a noise prediction implies, ``(z_t - sqrt(1 - abar) eps) / sqrt(abar)``, for z_t and
    eps [B, ...] and abar [B] (the inverse of :func:`add_noise`)."""
    a = broadcast_to(abar, z_t)
    return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()


def broadcast_to(values: Float[Tensor, " B"], like: Tensor) -> Tensor:
    """Per-sample values [B] viewed as [B, 1, 1, ...] to broadcast against ``like`` [B, ...]."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def cfg_convention_a(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """threestudio's classifier-free guidance (SDS): ``eps_c + s (eps_c - eps_u)``."""
    return eps_cond + scale * (eps_cond - eps_uncond)


def cfg_convention_b(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """diffusers' classifier-free guidance (VSD, ISM, ASD, ...): ``eps_u + s (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def timestep_weight(weighting: str, abar: Tensor) -> Tensor:
    """w(t) of threestudio's ``weighting_strategy`` for alphas_cumprod values ``abar`` (any shape):
    ``sds`` 1 - abar_t, ``uniform`` 1, ``fantasia3d`` sqrt(abar_t) (1 - abar_t)."""
    if weighting == "sds":
        return 1.0 - abar
    if weighting == "uniform":
        return torch.ones_like(abar)
    return abar.sqrt() * (1.0 - abar)


def predict_noise_under(teacher: Teacher, x_t: Tensor, t: Int[Tensor, " B"], embeddings: list[Tensor],
                        cameras: Cameras | None) -> tuple[Tensor, ...]:
    """One teacher pass scoring x_t [B, ...] at t [B] under each of ``embeddings`` (each [B, ...]).

    The copies are batched into one ``predict_noise`` call; returns one eps [B, ...] per embedding, in order.
    """
    copies = len(embeddings)
    eps = teacher.predict_noise(torch.cat([x_t] * copies), torch.cat([t] * copies), torch.cat(embeddings), cameras)
    return eps.chunk(copies)


def views_per_group(teacher: Teacher) -> int:
    """n of a multi-view teacher (it denoises groups of n consecutive views jointly), 1 for the others."""
    return int(getattr(teacher, "views_per_group", 1))


# ------------------------------------------------------------------------------------------------- timesteps
def sample_timesteps(batch_size: int, min_step: int, max_step: int, generator: torch.Generator | None,
                     device: torch.device | str = "cpu", group: int = 1) -> Int[Tensor, " B"]:
    """Integer timesteps uniform in [min_step, max_step] inclusive, [B] long: one per batch element, or with
    ``group = n`` one per run of n consecutive elements (the views of one object for a multi-view teacher)."""
    t = torch.randint(min_step, max_step + 1, (batch_size // group,), generator=generator)
    return t.repeat_interleave(group).to(device)


def sample_shared_timestep(batch_size: int, min_step: int, max_step: int, generator: torch.Generator | None,
                           device: torch.device | str = "cpu", group: int = 1) -> Int[Tensor, " B"]:
    """One integer timestep uniform in [min_step, max_step] for the whole batch (LucidDreamer), [B] long (``group``
    is accepted for a uniform signature: every group shares the one t anyway)."""
    t = torch.randint(min_step, max_step + 1, (1,), generator=generator)
    return t.expand(batch_size).to(device)


def percent_range(p_min: float, p_max: float, num_train_timesteps: int) -> tuple[int, int]:
    """threestudio's inclusive ``(int(T p_min), int(T p_max))``, clamped to [0, T - 1]."""
    low = int(num_train_timesteps * p_min + 1e-6)  # 1e-6: 0.98 - 0.78 is 0.19999...
    high = int(num_train_timesteps * p_max + 1e-6)
    top = num_train_timesteps - 1
    return max(min(low, top), 0), max(min(high, top), 0)


def percent_timestep_range(min_percent: Any, max_percent: Any, step: int, num_train_timesteps: int) -> tuple[int, int]:
    """:func:`percent_range` of the schedules ``min_percent`` and ``max_percent`` at ``step``."""
    return percent_range(schedule_value(min_percent, step), schedule_value(max_percent, step), num_train_timesteps)


def warmup_rate(step: int, warmup_steps: int) -> float:
    """LucidDreamer's ``r = 1 - min(step / warmup_steps, 1)``: 1 at the start, 0 once warmed up."""
    if warmup_steps <= 0:
        return 0.0
    return 1.0 - min(step / warmup_steps, 1.0)


def lucid_timestep_range(step: int, warmup_steps: int, num_train_timesteps: int, min_percent: float = 0.02,
                         max_percent: float = 0.5, warmup_max_percent: float = 0.98,
                         steps_offset: int = 0) -> tuple[int, int]:
    """LucidDreamer's inclusive t range: ``t ~ randint(t_lo, t_hi + int(span * r))`` (upper bound exclusive),
    shifted by the scheduler's ``steps_offset``.

    With T = 1000 and the defaults, ``t_lo = 20``, ``t_hi = 500``, ``span = 480``, so the largest index anneals
    from 979 at step 0 to 499 after ``warmup_steps`` (``r`` from :func:`warmup_rate`). LucidDreamer draws an
    *index* into its DDIM scheduler's timesteps, ``timesteps[i] = i + steps_offset`` (1 for Stable Diffusion's
    scheduler config, 0 for the toy teacher), so the timestep itself is the index plus the offset.
    """
    low = int(num_train_timesteps * min_percent + 1e-6)
    high = int(num_train_timesteps * max_percent + 1e-6)
    span = int(num_train_timesteps * (warmup_max_percent - max_percent) + 1e-6)
    exclusive_top = high + int(span * warmup_rate(step, warmup_steps))
    top = num_train_timesteps - 1
    return min(low + steps_offset, top), min(max(exclusive_top - 1, low) + steps_offset, top)


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


# ------------------------------------------------------------------------------------------------ the skeleton
class ScoreDistillation:
    """The shared ``__call__`` of every guidance method (see the module docstring for its steps).

    A method subclasses it and writes :meth:`gradient` (its formula); it may override :meth:`timestep_range`,
    :meth:`draw_timesteps`, :meth:`draw_noise`, :meth:`reduction`, :meth:`clean`, :meth:`check_inputs`, set
    ``shared_timestep`` / ``supports_perp_neg``, and use :meth:`after_gradient` for work that needs gradients of its
    own (VSD). ``cfg`` is the method's config dataclass (``dreamengine.config.guidance``): the skeleton reads its
    ``name``, ``grad_clip`` and, for the default range, ``min/max_step_percent``.
    """

    shared_timestep = False  # one t for the whole batch (LucidDreamer's family) instead of one per element
    supports_perp_neg = False  # the method combines Perp-Neg's negative views (SDS, CSD, ASD)

    def __init__(self, cfg: Any, teacher: Teacher, max_steps: int) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.max_steps = max_steps

    # ---- what a method may override
    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive (min_step, max_step) at this training step (default: the config's percent schedules)."""
        return percent_timestep_range(self.cfg.min_step_percent, self.cfg.max_step_percent, step,
                                      self.teacher.num_train_timesteps)

    def draw_timesteps(self, batch: int, step: int, generator: torch.Generator | None, device: torch.device | str,
                       group: int = 1) -> Int[Tensor, " B"]:
        """t [B]: uniform in :meth:`timestep_range`, per element (per group of ``group`` views) or shared by the
        batch (``shared_timestep``)."""
        sample = sample_shared_timestep if self.shared_timestep else sample_timesteps
        return sample(batch, *self.timestep_range(step), generator, device, group)

    def noise_offset(self) -> float:
        """Amplitude of LucidDreamer's per-channel offset noise (0: plain Gaussian noise)."""
        return 0.0

    def draw_noise(self, shape: torch.Size, generator: torch.Generator | None, dtype: torch.dtype,
                   device: torch.device | str) -> Tensor:
        """eps [B, ...]: ``randn`` plus :meth:`noise_offset` times a per-channel offset (:func:`offset_noise`)."""
        return offset_noise(shape, self.noise_offset(), generator, dtype, device)

    def reduction(self) -> str:
        """How g is injected (:func:`gradient_to_loss`): ``mean`` (d loss / dz = g / B, threestudio) by default."""
        return "mean"

    def check_inputs(self, prompts: PromptBatch, cameras: Cameras | None) -> None:
        """Raise when the method cannot use this conditioning."""
        if prompts.neg is not None and not self.supports_perp_neg:
            raise ConfigError(f"guidance.name={self.cfg.name} does not support Perp-Neg: set "
                              "prompt_processor.perp_neg=false or use guidance.name=sds, csd or asd")

    def gradient(self, z: Tensor, t: Int[Tensor, " B"], noise: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                 step: int, generator: torch.Generator | None) -> tuple[Tensor, dict[str, float]]:
        """The method's g [B, ...] for detached latents z at timesteps t with noise eps (under no_grad), and
        extra terms to log."""
        raise NotImplementedError

    def after_gradient(self, z: Tensor, prompts: PromptBatch, cameras: Cameras | None,
                       generator: torch.Generator | None) -> dict[str, float]:
        """Work after the gradient, with autograd on (VSD trains its score model); returns terms to log."""
        return {}

    # ---- the skeleton
    def __call__(self, rgb: Float[Tensor, "B H W 3"], prompts: PromptBatch, cameras: Cameras | None, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        """rgb [B, H, W, 3] in [0, 1] (differentiable) -> GuidanceOut with d loss / d z = g / B (or g)."""
        self.check_inputs(prompts, cameras)
        z = self.teacher.encode(rgb.permute(0, 3, 1, 2))
        batch, group = z.shape[0], views_per_group(self.teacher)
        if batch % group:
            raise ConfigError(f"the teacher denoises groups of {group} views, but the guidance got {batch} renders: "
                              f"set camera.views_per_group={group} and camera.batch_size to a multiple of {group}")
        t = self.draw_timesteps(batch, step, generator, z.device, group)
        noise = self.draw_noise(z.shape, generator, z.dtype, z.device)
        with torch.no_grad():
            grad, extra = self.gradient(z.detach(), t, noise, prompts, cameras, step, generator)
            nonfinite = float((~torch.isfinite(grad)).float().mean())
            grad = self.clean(grad, step)
        reduction = self.reduction()
        loss = gradient_to_loss(z, grad, reduction)
        terms = {"t_mean": float(t.float().mean()), **extra, "grad_norm": float(grad.norm() / math.sqrt(batch)),
                 "grad_nonfinite": nonfinite}
        terms.update(self.after_gradient(z, prompts, cameras, generator))
        return GuidanceOut(loss=loss, terms=terms, reduction=reduction)

    def clean(self, grad: Tensor, step: int) -> Tensor:
        """``nan_to_num``, then the element-wise clamp to ``[-c, c]``, ``c = grad_clip(step)``, when set."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.cfg.grad_clip is not None:
            clip = schedule_value(self.cfg.grad_clip, step)
            grad = grad.clamp(-clip, clip)
        return grad

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers of models the guidance trains during its forward pass (VSD's score model); none here."""
        return []

    # ---- checkpoints (stateless methods)
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless: nothing to restore."""


def steps_offset(teacher: Teacher) -> int:
    """The teacher's scheduler ``steps_offset`` (Stable Diffusion's config: 1; the toy world and teachers without a
    scheduler config: 0). LucidDreamer indexes its timesteps through it (:func:`lucid_timestep_range`)."""
    return int(getattr(teacher, "steps_offset", 0))


class LucidDreamerSchedule:
    """LucidDreamer's timesteps, noise and injection, shared by ISM, CSM and BSD (mix in before
    :class:`ScoreDistillation`): one t per batch, ``t ~ randint(t_lo, t_hi + int(span r)) + steps_offset``
    (:func:`lucid_timestep_range`), offset noise, and ``grad_injection`` (``sum``: ``SpecifyGradient``'s g)."""

    shared_timestep = True
    cfg: Any
    teacher: Teacher

    def timestep_range(self, step: int) -> tuple[int, int]:
        cfg = self.cfg
        return lucid_timestep_range(step, cfg.warmup_steps, self.teacher.num_train_timesteps, cfg.min_step_percent,
                                    cfg.max_step_percent, cfg.warmup_max_step_percent, steps_offset(self.teacher))

    def noise_offset(self) -> float:
        return self.cfg.noise_offset

    def reduction(self) -> str:
        return self.cfg.grad_injection
