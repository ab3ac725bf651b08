"""The optimization loop: cameras -> render -> guidance -> backward -> Adam step, with checkpoints.

Read :meth:`Trainer.train_step` top to bottom to follow one step of ``dreamengine generate``.
Everything random in a step (cameras, ray jitter, lights, timesteps, noise) draws from one
``torch.Generator`` whose state is saved in every checkpoint, so a killed and resumed run continues
with exactly the numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import signal
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dreamengine.build import (
    build_densifiers,
    build_guidance,
    build_optimizer,
    build_prompts,
    build_reference,
    build_scenes,
    build_teacher,
    build_text_prior,
    resolve_device,
)
from dreamengine.checkpoint import load_checkpoint, mismatch, restore_scenes, save_checkpoint, scenes_state_dict
from dreamengine.config import RunConfig, config_hash, config_to_yaml
from dreamengine.core.background import RandomColorBackground
from dreamengine.core.cameras import Cameras, CameraSampler
from dreamengine.core.files import atomic_write, write_json
from dreamengine.core.render import RenderOut, render_fixed
from dreamengine.errors import OutOfMemory, TrainingError
from dreamengine.memory import knobs, smaller_batch, suggest
from dreamengine.picard import (
    GradientPool,
    PicardWindow,
    apply_deferred,
    clone_tree,
    deferred_steps,
    move_tree,
    serve,
    step_seed,
)
from dreamengine.runs import open_run_dir
from dreamengine.schedules import schedule_value
from dreamengine.tblog import TensorBoardLog, last_timings

MAX_NONFINITE_GRADIENT = 0.5  # a guidance gradient more than half NaN/Inf (zeroed by nan_to_num) is a failed step
FORWARD_STREAM, UPDATE_STREAM = 0, 1  # trainer.parallel's per-step seeds: the forward pass, the after-step updates


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.step = step
        self.signal_name = signal_name


class StageTimer:
    """Accumulates wall time per named stage of a step (render, teacher, guidance, backward)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name].append(time.perf_counter() - start)

    def medians(self) -> dict[str, float]:
        return {name: float(np.median(values)) for name, values in self.seconds.items()}


class TimedTeacher:
    """Delegates to a teacher and records the time of its ``predict_noise`` calls (as "teacher")."""

    def __init__(self, teacher: Any, timer: StageTimer) -> None:
        self._teacher = teacher
        self._timer = timer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)

    def predict_noise(self, *args: Any, **kwargs: Any) -> Tensor:
        with self._timer("teacher"):
            return self._teacher.predict_noise(*args, **kwargs)


def regularizer_losses(render: RenderOut, cfg: RunConfig, step: int) -> dict[str, Tensor]:
    """threestudio DreamFusion's regularizers, each already multiplied by its weight (zero weights skip)."""
    losses: dict[str, Tensor] = {}
    opacity = render.opacity.clamp(1e-5, 1.0 - 1e-5)
    weight = schedule_value(cfg.loss.lambda_sparsity, step)
    if weight > 0:
        losses["sparsity"] = weight * opacity.mean()
    weight = schedule_value(cfg.loss.lambda_opaque, step)
    if weight > 0:
        losses["opaque"] = weight * -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()
    weight = schedule_value(cfg.loss.lambda_orient, step)
    if weight > 0:
        if render.orientation_loss is None:
            raise TrainingError("loss.lambda_orient > 0 needs normals: set render.shading to diffuse or "
                                "textureless, or set loss.lambda_orient=0")
        losses["orient"] = weight * render.orientation_loss
    weight = schedule_value(cfg.loss.lambda_normal_smooth, step)
    if weight > 0:
        if render.normal is None:
            raise TrainingError("loss.lambda_normal_smooth > 0 needs rendered normals, which this scene's renderer "
                                "does not make (NeRF scenes render them); set loss.lambda_normal_smooth=0")
        losses["normal_smooth"] = weight * normal_smoothness(render.normal)
    return losses


def normal_smoothness(normal: Float[Tensor, "B H W 3"]) -> Tensor:
    """threestudio zero123's 2D normal smoothness: mean squared difference of vertically plus of horizontally
    neighbouring pixels of the rendered normal map."""
    return ((normal[:, 1:] - normal[:, :-1]).square().mean() + (normal[:, :, 1:] - normal[:, :, :-1]).square().mean())


def fitted_depth_loss(depth: Float[Tensor, "M 1"], target: Float[Tensor, "M 1"]) -> Tensor:
    """threestudio zero123's reference depth loss: the target (depth or disparity, any scale) fitted to the
    rendered depth by least squares, ``a target + b`` (no gradient through the fit), then their mean squared error."""
    with torch.no_grad():
        design = torch.cat([target, torch.ones_like(target)], dim=1)  # [M, 2]
        fitted = design @ torch.linalg.lstsq(design, depth.detach()).solution  # [M, 1]
    return torch.nn.functional.mse_loss(fitted, depth)


def depth_correlation_loss(depth: Float[Tensor, "M 1"], target: Float[Tensor, "M 1"]) -> Tensor:
    """Magic123's relative depth loss: 1 - the Pearson correlation of the rendered depth and the target."""
    centered, target_centered = depth - depth.mean(), target - target.mean()
    correlation = (centered * target_centered).sum() / (centered.norm() * target_centered.norm()).clamp(min=1e-12)
    return 1.0 - correlation


def image_grid(images: list[Tensor]) -> np.ndarray:
    """Concatenate [H, W, 3] images in [0, 1] side by side into a uint8 array."""
    row = torch.cat([img.detach().clamp(0, 1).cpu() for img in images], dim=1)
    return (row.numpy() * 255.0 + 0.5).astype(np.uint8)


@dataclass
class StepEvent:
    """What a run reports after each step, to callbacks (progress bars, notebooks, GUIs)."""

    step: int  # steps done in this stage
    max_steps: int
    terms: dict[str, float]  # the logged losses and values of this step
    stage: str = ""  # the system stage's name ("" for a single-stage run)
    preview: Path | None = None  # the preview grid written at this step, if one was

    def preview_image(self) -> np.ndarray | None:
        """The preview grid as an [H, W, 3] uint8 array, or None when this step wrote none."""
        return None if self.preview is None else iio.imread(self.preview)


@dataclass
class ForwardPass:
    """One step's forward and backward pass: the gradients sit in the parameters' ``.grad``."""

    finite: bool  # loss and gradients finite (else the update is skipped)
    terms: dict[str, float]  # the step's logged losses and guidance values
    render_info: list[dict[str, Any]]  # per particle: what densification reads (Gaussians' screen-space gradient)


@dataclass
class StepGradients:
    """One step's gradients evaluated at some state (a Picard evaluation, possibly in another process): everything
    :meth:`Trainer.replay` needs to apply the step's update."""

    step: int
    grads: list[Tensor | None]  # the optimizer's parameters, in param-group order
    owned: list[list[Tensor | None] | None]  # the guidance's own optimizers' recorded steps (VSD's score model)
    forward: ForwardPass


def portable_info(info: dict[str, Any]) -> dict[str, Any]:
    """A render's densification info with the screen-space means' gradient read out (no autograd tensors)."""
    if "means2d" not in info:
        return {}
    grad = info["means2d"].grad
    return {"means2d_grad": None if grad is None else grad.detach().clone(), "radii": info["radii"].detach(),
            **{key: info[key] for key in ("width", "height", "n_cameras")}}


def all_finite(tensor: Tensor) -> bool:
    """Whether every element of ``tensor`` is finite. A NaN or an infinity makes the sum non-finite, so a finite
    sum proves it in one pass (20x cheaper than ``isfinite(tensor).all()`` for the hash table's gradient); only a
    non-finite sum, which finite values can also give by overflowing, is checked element by element."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after] (0: never)."""
    return every > 0 and after // every > before // every


class Trainer:
    """Owns the scene(s), teacher, guidance and optimizer of one run directory.

    With ``trainer.n_particles = P > 1`` the run optimizes P independent scenes of the same kind (VSD's
    particles, which share the guidance's score model): each step renders ``camera.batch_size`` views of every
    particle and the guidance sees all P x B renders as one batch. A guidance loss with ``reduction="mean"``
    (``gradient_to_loss`` divides by the batch size) is multiplied by P so that each particle receives the
    gradient it would get alone; a ``sum`` loss (``SpecifyGradient``'s g per sample) already does.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, stage: str = "") -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.stage = stage  # a system stage's name, reported in step events
        self.device = resolve_device(cfg.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.timer = StageTimer()

        self.sampler = CameraSampler.from_config(cfg.camera)
        self.reference = build_reference(cfg, self.device)  # image-to-3D: the reference image and its camera
        teacher = build_teacher(cfg, self.device, self.reference)
        self.teacher = TimedTeacher(teacher, self.timer)
        self.prompts = build_prompts(cfg, teacher)
        self.scenes, self.background, self.renderers = build_scenes(cfg, self.device)
        self.densifiers = build_densifiers(cfg, self.scenes)
        self.guidance = build_guidance(cfg, self.teacher)
        self.text_prior = build_text_prior(cfg, self.device)  # Magic123: a text teacher's SDS beside the image's
        self.optimizer = build_optimizer(cfg, self.scenes, self.background)
        self.step = 0
        self.bad_steps = 0
        self.oom_shrinks: list[dict[str, Any]] = []  # trainer.on_oom=shrink: each size change after an OOM
        parallel = cfg.trainer.parallel
        self.step_seeds = parallel.step_seeds  # each step's randomness from (seed, step) alone
        self.picard = (PicardWindow(parallel.window, parallel.threshold, parallel.ema_decay, parallel.adaptivity)
                       if parallel.window > 1 else None)
        self._stop_signal: str | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, stage: str = "") -> Trainer:
        """A run directory's trainer from its config.yaml, restored from its checkpoint when it has one (a run
        killed before its first checkpoint starts over, its log truncated)."""
        run_dir, cfg = open_run_dir(run_dir)
        trainer = cls(cfg, run_dir, stage)
        if trainer.checkpoint_path.is_file():
            trainer.load()
        else:
            trainer.truncate_log()
        return trainer

    @property
    def scene(self) -> torch.nn.Module:
        """The first (usually only) particle's scene."""
        return self.scenes[0]

    @property
    def renderer(self) -> Any:
        return self.renderers[0]

    # ----------------------------------------------------------------------------------------- one step
    def training_backgrounds(self, batch: int, particles: int) -> list[torch.nn.Module]:
        """The background of each particle's renders this step: the trained one, or, with probability
        ``render.random_background_prob`` (one draw per step), a random solid color per view (threestudio's
        ``random_aug``). Nothing is drawn from the generator when the probability is 0."""
        prob = float(self.cfg.render.random_background_prob)
        if prob <= 0.0 or float(torch.rand((), generator=self.generator)) >= prob:
            return [self.background] * particles
        colors = torch.rand(particles, batch, 3, generator=self.generator).to(self.device)
        return [RandomColorBackground(colors[i]) for i in range(particles)]

    def train_step(self) -> dict[str, float]:
        """One optimization step. Returns the logged terms. Skips the update if the loss is not finite."""
        if self.step_seeds:
            self.seed_step(self.step, FORWARD_STREAM)
        return self.update(self.forward_backward())

    def seed_step(self, step: int, stream: int) -> None:
        """Seed the step generator and torch's global generator from (seed, step, stream) alone."""
        seed = step_seed(self.cfg.seed, step, stream)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)

    def forward_backward(self) -> ForwardPass:
        """Render, guide and backpropagate one step; the gradients are left in the parameters' ``.grad``."""
        height, width, batch = self.cfg.camera.size_at(self.step)  # sizes may change at camera.phases
        particles = len(self.scenes)
        cameras = self.sampler.sample(batch * particles, self.generator).to(self.device)
        backgrounds = self.training_backgrounds(batch, particles)
        with self.timer("render"):
            renders = [renderer(scene.render_inputs(), backgrounds[i], cameras[i * batch:(i + 1) * batch], height,
                                width, generator=self.generator, perturb=True)
                       for i, (scene, renderer) in enumerate(zip(self.scenes, self.renderers, strict=True))]
        rgb = renders[0].rgb if particles == 1 else torch.cat([render.rgb for render in renders])
        prompt_batch = self.prompts(cameras)
        with self.timer("guidance"):
            guided = self.guidance(rgb, prompt_batch, cameras, self.step, self.generator)
        regularizers: dict[str, Tensor] = {}
        for render in renders:  # each particle's own regularizers
            for name, value in regularizer_losses(render, self.cfg, self.step).items():
                regularizers[name] = regularizers[name] + value if name in regularizers else value
        for scene in self.scenes:  # the scene's own (a mesh with trained vertices: smoothness)
            for name, value in scene.regularizers().items():
                regularizers[name] = regularizers[name] + value if name in regularizers else value
        scale = particles if guided.reduction == "mean" else 1  # each particle gets the gradient it would alone
        guidance_weight = 1.0
        if self.reference is not None:  # image-to-3D: the guidance's weight, and the reference view fitted to the image
            image_cfg = self.cfg.image
            guidance_weight = schedule_value(image_cfg.lambda_guidance, self.step)
            fit = max(schedule_value(image_cfg.lambda_rgb, self.step), schedule_value(image_cfg.lambda_mask, self.step))
            if fit > 0:  # threestudio's zero123 system
                with self.timer("reference"):
                    for name, value in self.reference_losses().items():
                        regularizers[name] = regularizers[name] + value if name in regularizers else value
        # the teacher may sit on another device than the render
        loss = scale * guidance_weight * guided.loss.to(rgb.device) + sum(regularizers.values())
        text_terms: dict[str, float] = {}
        if self.text_prior is not None:  # Magic123's 2D prior: the text teacher's SDS on the same renders
            with self.timer("text_prior"):
                prior = self.text_prior
                text_guided = prior.guidance(rgb, prior.prompts(cameras), cameras, self.step, self.generator)
            text_weight = schedule_value(self.cfg.text_prior.weight, self.step)
            text_scale = particles if text_guided.reduction == "mean" else 1
            loss = loss + text_scale * text_weight * text_guided.loss.to(rgb.device)
            text_terms = {"text_prior_loss": float(text_guided.loss.detach()),
                          "text_prior_grad_norm": text_guided.terms.get("grad_norm", 0.0)}

        with self.timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            finite = bool(torch.isfinite(loss)) and all(
                all_finite(p.grad) for p in self.optimized_parameters() if p.grad is not None)
            # the guidance replaces NaN in its gradient by 0: a step whose gradient was mostly NaN failed
            finite = finite and guided.terms.get("grad_nonfinite", 0.0) <= MAX_NONFINITE_GRADIENT
        terms = {"loss": float(loss.detach()), **guided.terms, **text_terms}
        terms.update({name: float(value.detach()) for name, value in regularizers.items()})
        return ForwardPass(finite, terms, [render.info for render in renders])

    def update(self, forward: ForwardPass) -> dict[str, float]:
        """The step's update from the gradients in ``.grad``: the optimizer step (when finite), the step count,
        then the after-step refreshes (occupancy grid, densification, schedules). Returns the logged terms."""
        with self.timer("optimizer"):
            if forward.finite:
                self.optimizer.step()
        if self.step_seeds:
            self.seed_step(self.step, UPDATE_STREAM)
        self.step += 1
        with self.timer("after_step"):
            parts = zip(self.scenes, self.renderers, self.densifiers, forward.render_info, strict=True)
            for scene, renderer, densify, info in parts:
                renderer.after_step(scene.render_inputs(), self.step)  # NeRF: occupancy grid refresh
                if densify is not None:  # Gaussians: clone / split / prune
                    densify.step_post_backward(scene, self.optimizer, info, self.step)
                scene.update_schedules(self.optimizer, self.step)  # Gaussians: position lr; NeRF: blob fade
        self.bad_steps = 0 if forward.finite else self.bad_steps + 1
        terms = dict(forward.terms)
        for scene in self.scenes:  # e.g. the number of Gaussians, summed over particles
            for name, value in scene.log_terms().items():
                terms[name] = terms.get(name, 0.0) + value
        if not forward.finite:
            terms["skipped"] = 1.0
        return terms

    def optimized_parameters(self) -> list[torch.nn.Parameter]:
        """The optimizer's parameters in param-group order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # ------------------------------------------------------------------- trainer.parallel (dreamengine/picard.py)
    def gradients_at(self, state: Any | None, step: int) -> StepGradients:
        """Step ``step``'s gradients at an evaluation ``state`` (None: the current one), with its own seeds; nothing
        is updated (the guidance's own optimizers record their steps instead of taking them)."""
        if state is not None:
            self.load_evaluation_state(state)
        self.step = step
        self.seed_step(step, FORWARD_STREAM)
        with deferred_steps(self.guidance.optimizers()) as owned:
            forward = self.forward_backward()
        grads = [None if p.grad is None else p.grad.detach().clone() for p in self.optimized_parameters()]
        forward.render_info = [portable_info(info) for info in forward.render_info]
        return StepGradients(step, grads, list(owned), forward)

    def replay(self, gradients: StepGradients) -> dict[str, float]:
        """Apply one step's update with gradients computed by :meth:`gradients_at` (here or in a worker)."""
        if gradients.step != self.step:
            raise TrainingError(f"internal: replaying step {gradients.step} at step {self.step}")
        for param, grad in zip(self.optimized_parameters(), gradients.grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device)
        apply_deferred(self.guidance.optimizers(), gradients.owned)
        render_info = [{key: value.to(self.device) if isinstance(value, Tensor) else value
                        for key, value in info.items()} for info in gradients.forward.render_info]
        return self.update(ForwardPass(gradients.forward.finite, gradients.forward.terms, render_info))

    def evaluation_state(self) -> dict[str, Any]:
        """A copy of what a step's gradient reads: the scenes, background, renderers and the guidance's state."""
        return clone_tree({**scenes_state_dict(self.scenes, self.background, self.renderers),
                           "guidance": self.guidance.state_dict()})

    def load_evaluation_state(self, state: dict[str, Any]) -> None:
        state = clone_tree(state)  # the modules must never alias a guess that is evaluated again
        restore_scenes(move_tree(state, self.device), Path("<trainer.parallel state>"), self.scenes,
                       self.background, self.renderers)
        if state["guidance"]:
            self.guidance.load_state_dict(move_tree(state["guidance"], self.device))

    def parameters_now(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.optimized_parameters()]

    def snapshot(self) -> dict[str, Any]:
        """Everything the following steps depend on, copied (what :meth:`restore` returns to)."""
        return {"evaluation": self.evaluation_state(), "optimizer": clone_tree(self.optimizer.state_dict()),
                "densify": [clone_tree(d.state_dict()) if d is not None else {} for d in self.densifiers],
                "step": self.step, "bad_steps": self.bad_steps}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.load_evaluation_state(snapshot["evaluation"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        for densify, state in zip(self.densifiers, snapshot["densify"], strict=True):
            if densify is not None:
                densify.load_state_dict(clone_tree(state))
        self.step, self.bad_steps = snapshot["step"], snapshot["bad_steps"]

    def ends_window(self, step: int) -> bool:
        """Whether the update ending at ``step`` reshapes the parameters (densification; resets opacities)."""
        return any(densify is not None and densify.reshapes_at(step) for densify in self.densifiers)

    def advance(self, pool: GradientPool | None = None) -> list[tuple[int, dict[str, float]]]:
        """One step, or with ``trainer.parallel.window > 1`` one Picard iteration (several steps at once).
        Returns ``(step, terms)`` per step taken."""
        if self.picard is None:
            return [(self.step + 1, self.train_step())]
        return self.picard.advance(self, self.cfg.trainer.max_steps, pool)  # on failure: the last accepted state

    def start_workers(self) -> GradientPool | None:
        """With ``trainer.parallel.workers > 1``, the worker processes (this one is the first worker)."""
        parallel = self.cfg.trainer.parallel
        if self.picard is None or parallel.workers < 2:
            return None
        threads = max(1, torch.get_num_threads() // parallel.workers) if self.device.type == "cpu" else 0
        if threads:
            torch.set_num_threads(threads)  # the cores are shared out between the processes
        return GradientPool(gradient_worker, (self.cfg, self.run_dir, threads), parallel.workers - 1)

    def reference_losses(self) -> dict[str, Tensor]:
        """Each particle rendered from the reference camera against the reference image, weighted:
        ``ref_rgb`` = lambda_rgb MSE(render, image over the render's background), ``ref_mask`` = lambda_mask
        MSE(opacity, mask) (threestudio's zero123 system); with a depth map (``image.depth_path``), on the object's
        pixels, ``ref_depth`` = lambda_depth :func:`fitted_depth_loss` and ``ref_depth_rel`` = lambda_depth_rel
        :func:`depth_correlation_loss`."""
        reference, image_cfg = self.reference, self.cfg.image
        height, width = reference.image.mask.shape[:2]
        cameras = reference.cameras
        _, directions = cameras.rays(height, width)
        with torch.no_grad():
            background = self.background(directions)[0]  # [H, W, 3] what the render composites over
        target_rgb = reference.image.composite(background)
        losses: dict[str, Tensor] = {}
        for scene, renderer in zip(self.scenes, self.renderers, strict=True):
            out = renderer(scene.render_inputs(), self.background, cameras, height, width, generator=self.generator,
                           perturb=True)
            terms = {"ref_rgb": schedule_value(image_cfg.lambda_rgb, self.step)
                     * torch.nn.functional.mse_loss(out.rgb[0], target_rgb),
                     "ref_mask": schedule_value(image_cfg.lambda_mask, self.step)
                     * torch.nn.functional.mse_loss(out.opacity[0], reference.image.mask)}
            if reference.image.depth is not None:  # on the object's pixels: the map says nothing elsewhere
                inside = reference.image.mask[..., 0] > 0.5
                depth, target = out.depth[0][inside], reference.image.depth[inside]  # [M, 1] each
                for name, key, loss in (("ref_depth", "lambda_depth", fitted_depth_loss),
                                        ("ref_depth_rel", "lambda_depth_rel", depth_correlation_loss)):
                    weight = schedule_value(getattr(image_cfg, key), self.step)
                    if weight > 0:
                        terms[name] = weight * loss(depth, target)
            for name, value in terms.items():
                losses[name] = losses[name] + value if name in losses else value
        return losses

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self, callbacks: Sequence[Callable[[StepEvent], None]] = ()) -> None:
        """Run steps until ``trainer.max_steps``; checkpoint periodically, at the end and on signals.

        Each callback receives a :class:`StepEvent` after every step (a progress bar, a notebook, a GUI). If a
        callback raises, the run is checkpointed first, so nothing is lost. With ``trainer.parallel.window > 1``
        each iteration may take several steps (:meth:`advance`); logs, events, previews and checkpoints follow the
        steps taken (a preview or checkpoint due inside an iteration is written at its end)."""
        tcfg = self.cfg.trainer
        board = TensorBoardLog(self.run_dir, self.cfg, self.step) if self.cfg.logging.tensorboard else None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        threads = torch.get_num_threads()
        started = time.perf_counter()
        pool = self.start_workers()
        try:
            while self.step < tcfg.max_steps:
                before = self.step
                try:
                    taken = self.advance(pool)
                except torch.cuda.OutOfMemoryError:
                    self.out_of_memory()  # raises OutOfMemory, or shrinks the renders and we go on
                    if pool is not None:  # the workers render at the new sizes too
                        pool.close()
                        pool = self.start_workers()
                    continue
                except TrainingError:
                    if self.picard is not None:  # a worker failed: advance() went back to the last accepted step
                        self.save()
                    raise
                for step, terms in taken:
                    if "skipped" in terms:
                        self._log({"step": step, "warning": "non-finite loss or gradient; step skipped", **terms})
                    if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                        self._log({"step": step, **terms})
                        if board is not None:
                            board.scalars(step, terms, self.optimizer, last_timings(self.timer.seconds))
                if self.bad_steps >= tcfg.max_bad_steps:
                    self.save()
                    raise TrainingError(
                        f"the loss or its gradients were NaN/Inf for {self.bad_steps} steps in a row (up to "
                        f"step {self.step}); the last good parameters are saved in {self.checkpoint_path}. "
                        "Lower the learning rates (optim.*) or the guidance scale, or set guidance.grad_clip.")
                preview = None
                if crossed(before, self.step, tcfg.preview_every):
                    preview = self.write_preview()
                    if board is not None:
                        board.preview(self.step, iio.imread(preview))
                if crossed(before, self.step, tcfg.checkpoint_every):
                    self.save()
                for step, terms in taken:
                    event = StepEvent(step, tcfg.max_steps, terms, self.stage, preview if step == self.step else None)
                    for callback in callbacks:
                        try:
                            callback(event)
                        except BaseException:
                            self.save()
                            raise
                if self._stop_signal is not None:
                    self.save()
                    raise Interrupted(self.step, self._stop_signal)
            self.save()
            self.write_timings(time.perf_counter() - started)
        finally:
            if pool is not None:
                pool.close()
                torch.set_num_threads(threads)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if board is not None:
                board.close()

    def out_of_memory(self) -> None:
        """After a CUDA out-of-memory error in a step: with ``trainer.on_oom=stop`` save the checkpoint and raise
        :class:`OutOfMemory` naming the settings to lower (from :mod:`dreamengine.memory`) and the resume command;
        with ``shrink`` halve the batch (else render at 3/4 the size, not below 16 px), record it in
        metrics.jsonl, ``self.oom_shrinks`` and config.yaml (so a resume keeps the smaller sizes), and return."""
        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        camera = self.cfg.camera
        sizes = [(camera.height, camera.width, camera.batch_size)]
        sizes += [(p.height, p.width, p.batch_size) for p in camera.phases]
        group = max(1, camera.views_per_group)
        if max(b for _, _, b in sizes) > group:
            smaller = [(h, w, smaller_batch(b, group)) for h, w, b in sizes]
        else:
            smaller = [(max(16, int(h * 0.75)), max(16, int(w * 0.75)), b) for h, w, b in sizes]
        if self.cfg.trainer.on_oom == "shrink" and smaller != sizes:
            (h, w, b), phases = smaller[0], smaller[1:]
            new_camera = dataclasses.replace(camera, height=h, width=w, batch_size=b, phases=[
                dataclasses.replace(p, height=ph, width=pw, batch_size=pb)
                for p, (ph, pw, pb) in zip(camera.phases, phases, strict=True)])
            self.cfg = dataclasses.replace(self.cfg, camera=new_camera)
            change = {"step": self.step, "from": [list(x) for x in sizes], "to": [list(x) for x in smaller]}
            self.oom_shrinks.append(change)
            self._log({"step": self.step, "warning": "CUDA out of memory: renders shrunk (height, width, batch "
                       "per camera phase)", "oom_shrink": change})
            if (self.run_dir / "config.yaml").is_file():
                atomic_write(self.run_dir / "config.yaml", config_to_yaml(self.cfg))
            return
        self.save()
        # the GPU's whole memory: the run's own tensors (teacher weights, ...) are part of the estimate
        total = torch.cuda.mem_get_info(self.device)[1] / 1024**3 if self.device.type == "cuda" else 0.0
        overrides, _ = suggest(knobs(self.cfg), total) if total else ([], 0.0)
        lower = " ".join(shlex.quote(item) for item in overrides) or (
            "camera.batch_size, camera.height/width, render.num_samples, teacher.cpu_offload")
        raise OutOfMemory(
            f"CUDA ran out of memory at step {self.step + 1}; the run was checkpointed at step {self.step}. Lower the "
            f"settings (estimated to fit: {lower}; see dreamengine doctor --config RUN_DIR/config.yaml), or set "
            f"trainer.on_oom=shrink to shrink the renders automatically. Edit {self.run_dir / 'config.yaml'} and "
            f"continue with: dreamengine resume {self.run_dir}")

    def write_timings(self, fit_seconds: float | None = None) -> None:
        """Median seconds per step of each stage (``guidance`` includes ``teacher``) to timings.json, with the wall
        time of :meth:`fit` (since this process started or resumed it; worker start-up included)."""
        medians = self.timer.medians()
        medians["steps_timed"] = len(self.timer.seconds.get("render", []))
        if fit_seconds is not None:
            medians["fit_seconds"] = fit_seconds
        if self.picard is not None:  # gradient evaluations per step taken: the parallel method's cost measure
            medians["parallel"] = self.picard.summary()
        write_json(self.run_dir / "timings.json", medians)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C while saving: stop now
            raise KeyboardInterrupt
        self._stop_signal = signal.Signals(signum).name

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------------------- previews
    def render_views(self, cameras: Cameras, height: int, width: int, particle: int = 0) -> RenderOut:
        """Deterministic render of one particle's scene (see :func:`render_fixed`)."""
        return render_fixed(self.renderers[particle], self.scenes[particle].render_inputs(), self.background,
                            cameras.to(self.device), height, width)

    def write_preview(self, num_views: int = 4) -> Path:
        """An image grid: per particle, a row of rgb and a row of opacity over an orbit of ``num_views``."""
        cameras = self.sampler.orbit(num_views, elevation_deg=15.0)
        rows = []
        for particle in range(len(self.scenes)):
            height, width, _ = self.cfg.camera.size_at(self.step)
            out = self.render_views(cameras, height, width, particle)
            rows += [image_grid(list(out.rgb)), image_grid([o.expand(-1, -1, 3) for o in out.opacity])]
        path = self.run_dir / "previews" / f"step-{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, np.concatenate(rows, axis=0))
        return path

    # -------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "ckpt" / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "bad_steps": self.bad_steps,
            **scenes_state_dict(self.scenes, self.background, self.renderers),
            "densify": [d.state_dict() if d is not None else {} for d in self.densifiers],
            "optimizer": self.optimizer.state_dict(),
            "guidance": self.guidance.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config_hash": config_hash(self.cfg),
            **({"picard": self.picard.state_dict()} if self.picard is not None else {}),
        }

    def save(self) -> None:
        save_checkpoint(self.state_dict(), self.checkpoint_path)

    def load(self, path: Path | None = None) -> None:
        """Restore everything a step depends on from a checkpoint (default: ``ckpt/last.pt``)."""
        path = path or self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        restore_scenes(state, path, self.scenes, self.background, self.renderers)
        try:
            for densify, densify_state in zip(self.densifiers, state["densify"], strict=True):
                if densify is not None:
                    densify.load_state_dict(densify_state)
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            if state.get("guidance"):
                self.guidance.load_state_dict(state["guidance"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if self.picard is not None and "picard" in state:  # the window's guesses and threshold: exact resume
                self.picard.load_state_dict(state["picard"])
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise mismatch(path, error) from None
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.truncate_log()

    def truncate_log(self) -> None:
        """Drop training-log lines after the restored step (a killed run logged steps it will now redo)."""
        log = self.run_dir / "metrics.jsonl"
        if not log.is_file():
            return
        kept = [line for line in log.read_text().splitlines() if logged_step(line) <= self.step]
        atomic_write(log, "".join(line + "\n" for line in kept))


def gradient_worker(rank: int, payload: tuple[RunConfig, Path, int], tasks: Any, results: Any) -> None:
    """A ``trainer.parallel`` worker process: its own trainer of the run's config (on GPU ``rank`` when there are
    several), evaluating gradients at the states the main process sends until it sends ``None``."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the main process stops the run (checkpoint first), then us
        signal.signal(sig, signal.SIG_IGN)
    cfg, run_dir, threads = payload
    if threads:
        torch.set_num_threads(threads)
    if resolve_device(cfg.device).type == "cuda" and torch.cuda.device_count() > 1:
        cfg = dataclasses.replace(cfg, device=f"cuda:{rank % torch.cuda.device_count()}")
    try:
        trainer = Trainer(cfg, run_dir)
    except Exception:  # noqa: BLE001 - the main process reports it
        results.put((0, "error", traceback.format_exc()))
        return
    serve(trainer.gradients_at, tasks, results)


def logged_step(line: str) -> float:
    """The step of a training-log line; infinity for a line cut short by a kill (so it is dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
