"""Adaptive density control for Gaussian scenes (3DGS), as a strategy object in gsplat's style.

The trainer calls, every step, after ``loss.backward()`` and ``optimizer.step()``:

    strategy.step_post_backward(scene, optimizer, render.info, step)

1. **Statistics.** For each Gaussian visible in a view (radius > 0), the norm of the gradient of the loss
   w.r.t. its projected mean is accumulated, in gsplat's units: pixel gradients times ``(width / 2,
   height / 2) * n_cameras`` (normalized-device units, undoing the batch mean), with a visibility count.
2. **Refinement** every ``refine_every`` steps in ``[refine_start, refine_stop)``: Gaussians whose mean
   accumulated gradient exceeds ``grow_grad2d`` are **cloned** (an exact copy is appended) when their largest
   scale is ``<= grow_scale3d * radius``, else **split** (replaced by two children drawn from the parent's
   Gaussian, scales divided by 1.6). The number of new Gaussians is capped at ``max_gaussians - N``
   (the highest gradients first). Then Gaussians with opacity ``< prune_opacity``, or (after the first opacity
   reset) with largest scale ``> prune_scale3d * radius``, are **pruned**. Statistics restart.
3. **Opacity reset** every ``reset_every`` steps: opacities are clamped to ``<= 2 * prune_opacity``.

Optimizer state follows the Gaussians: when N changes, every state tensor of each of the scene's Adam groups
whose first dimension is N (``exp_avg``, ``exp_avg_sq``, ...) is re-indexed with its parameter, so surviving
Gaussians keep their moments, and new rows (clones, split children) get zero moments, as in the 3DGS code. An
opacity reset zeroes the opacity moments. Resized parameters are new Parameter objects (autograd caches a
leaf's shape); the optimizer's groups and state are re-pointed at them, so keep no other references to the
scene's parameters across a call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dreamengine.config.scenes import DensifyConfig
from dreamengine.errors import ConfigError
from dreamengine.renderers.splat import quat_to_rotmat
from dreamengine.scenes.gaussians import PARAM_NAMES, GaussianScene

SPLIT_SCALE_DIVISOR = 1.6




class DensifyStrategy:
    """Clone / split / prune / reset Gaussians of one :class:`GaussianScene` (see the module docstring)."""

    def __init__(self, config: DensifyConfig | None = None) -> None:
        config = config if config is not None else DensifyConfig()
        if config.refine_every < 1 or config.max_gaussians < 1 or config.reset_every < 0:
            raise ConfigError("densify.refine_every and densify.max_gaussians must be >= 1 and "
                              f"densify.reset_every >= 0, got {config.refine_every}, {config.max_gaussians}, "
                              f"{config.reset_every}")
        self.config = config
        self.grad2d_sum: Tensor | None = None  # [N]
        self.count: Tensor | None = None  # [N]
        self.generator = torch.Generator().manual_seed(config.seed)

    # ---- the per-step entry point -----------------------------------------------------------------
    @torch.no_grad()
    def step_post_backward(self, scene: GaussianScene, optimizer: torch.optim.Optimizer,
                           render_info: dict[str, Any], step: int) -> dict[str, int]:
        """Accumulate statistics and refine / reset when due. Returns counts of what changed."""
        cfg = self.config
        self._accumulate(scene, render_info)
        stats = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if self.grows_at(step):
            stats["cloned"], stats["split"] = self.grow(scene, optimizer)
            prune_large = cfg.reset_every > 0 and step > cfg.reset_every
            stats["pruned"] = self.prune(scene, optimizer, prune_large=prune_large)
            self.grad2d_sum = None
            self.count = None
        if self.resets_at(step):
            self.reset_opacities(scene, optimizer)
            stats["reset"] = 1
        return stats

    def grows_at(self, step: int) -> bool:
        """Whether :meth:`step_post_backward` at ``step`` clones, splits and prunes."""
        cfg = self.config
        return cfg.refine_start <= step < cfg.refine_stop and step % cfg.refine_every == 0 and step > 0

    def resets_at(self, step: int) -> bool:
        """Whether :meth:`step_post_backward` at ``step`` resets the opacities."""
        cfg = self.config
        return cfg.reset_every > 0 and step > 0 and step % cfg.reset_every == 0 and step < cfg.refine_stop

    def reshapes_at(self, step: int) -> bool:
        """Whether :meth:`step_post_backward` at ``step`` may change the number of Gaussians or reset opacities."""
        return self.grows_at(step) or self.resets_at(step)

    def _accumulate(self, scene: GaussianScene, info: dict[str, Any]) -> None:
        n = scene.num_gaussians
        if self.grad2d_sum is None or self.grad2d_sum.shape[0] != n:
            self.grad2d_sum = torch.zeros(n, device=scene.means.device)
            self.count = torch.zeros(n, device=scene.means.device)
        # the render's screen-space means' gradient, or that gradient recorded elsewhere (a Picard evaluation)
        grad = info["means2d_grad"] if "means2d_grad" in info else info["means2d"].grad
        if grad is None or grad.shape[1] != n or not bool(torch.isfinite(grad).all()):
            return  # no gradient this step (skipped step, or N changed since the render)
        scale = torch.tensor([info["width"] / 2.0, info["height"] / 2.0], device=grad.device)
        norms = (grad * scale * info["n_cameras"]).norm(dim=-1)  # [B, N]
        visible = info["radii"] > 0
        self.grad2d_sum += (norms * visible).sum(0)
        self.count += visible.sum(0)

    # ---- operations (public so that tests and tools can call them directly) ------------------------
    @torch.no_grad()
    def grow(self, scene: GaussianScene, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
        """Clone and split Gaussians with a high mean screen-space gradient; returns (cloned, split)."""
        cfg = self.config
        if self.grad2d_sum is None or self.count is None:
            return 0, 0
        mean_grad = self.grad2d_sum / self.count.clamp(min=1.0)
        candidates = torch.nonzero(mean_grad > cfg.grow_grad2d).squeeze(-1)
        budget = max(cfg.max_gaussians - scene.num_gaussians, 0)
        if len(candidates) > budget:
            candidates = candidates[torch.argsort(mean_grad[candidates], descending=True)[:budget]]
        if len(candidates) == 0:
            return 0, 0
        small = scene.scales[candidates].amax(dim=-1) <= cfg.grow_scale3d * scene.radius
        clone_ids, split_ids = candidates[small], candidates[~small]
        tensors = _tensors(scene)
        clones = {name: value[clone_ids] for name, value in tensors.items()}
        children = self._split_children(scene, split_ids)
        keep = torch.ones(scene.num_gaussians, dtype=torch.bool, device=scene.means.device)
        keep[split_ids] = False
        new_rows = {name: torch.cat([clones[name], children[name]]) for name in tensors}
        self._rebuild(scene, optimizer, torch.nonzero(keep).squeeze(-1), new_rows)
        return len(clone_ids), len(split_ids)

    def _split_children(self, scene: GaussianScene, ids: Tensor) -> dict[str, Tensor]:
        """Two children per parent: means drawn from the parent's Gaussian, scales / 1.6, rest copied."""
        tensors = {name: value[ids].repeat(2, *([1] * (value.dim() - 1)))
                   for name, value in _tensors(scene).items()}
        scales = scene.scales[ids].repeat(2, 1)
        noise = torch.randn(scales.shape, generator=self.generator).to(scales.device)
        rot = quat_to_rotmat(tensors["quats"])
        tensors["means"] = tensors["means"] + (rot @ (scales * noise)[..., None])[..., 0]
        tensors["scales"] = tensors["scales"] - math.log(SPLIT_SCALE_DIVISOR)  # log scales
        return tensors

    @torch.no_grad()
    def prune(self, scene: GaussianScene, optimizer: torch.optim.Optimizer, prune_large: bool = True) -> int:
        """Remove transparent (and, with ``prune_large``, very large) Gaussians; never all of them."""
        cfg = self.config
        remove = scene.opacities < cfg.prune_opacity
        if prune_large:
            remove |= scene.scales.amax(dim=-1) > cfg.prune_scale3d * scene.radius
        if bool(remove.all()) or not bool(remove.any()):
            return 0
        self._rebuild(scene, optimizer, torch.nonzero(~remove).squeeze(-1), None)
        return int(remove.sum())

    @torch.no_grad()
    def reset_opacities(self, scene: GaussianScene, optimizer: torch.optim.Optimizer) -> None:
        """Clamp opacities to ``2 * prune_opacity`` and zero their Adam moments."""
        ceiling = math.log(2 * self.config.prune_opacity / (1 - 2 * self.config.prune_opacity))
        scene.logit_opacities.clamp_(max=ceiling)
        for value in optimizer.state.get(scene.logit_opacities, {}).values():
            if isinstance(value, Tensor) and value.dim() > 0:
                value.zero_()

    def _rebuild(self, scene: GaussianScene, optimizer: torch.optim.Optimizer, keep: Tensor,
                 new_rows: dict[str, Tensor] | None) -> None:
        """Keep rows ``keep`` [K] of every parameter (and its optimizer state), then append ``new_rows``."""
        old_n = scene.num_gaussians
        added = 0 if new_rows is None else new_rows["means"].shape[0]
        for name, param in scene.parameters_by_name().items():
            rows = param.detach()[keep]
            if new_rows is not None:
                rows = torch.cat([rows, new_rows[name].to(rows)])
            new_param = scene.set_parameter(name, rows)
            state = optimizer.state.pop(param, None)
            if state:
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == old_n:
                        zeros = value.new_zeros(added, *value.shape[1:])
                        state[key] = torch.cat([value[keep], zeros])
                optimizer.state[new_param] = state
            for group in optimizer.param_groups:
                group["params"] = [new_param if p is param else p for p in group["params"]]
        for attr in ("grad2d_sum", "count"):
            value = getattr(self, attr)
            if value is not None:
                setattr(self, attr, torch.cat([value[keep], value.new_zeros(added)]))

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"grad2d_sum": self.grad2d_sum, "count": self.count, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad2d_sum = state["grad2d_sum"]
        self.count = state["count"]
        self.generator.set_state(state["generator"])


def _tensors(scene: GaussianScene) -> dict[str, Tensor]:
    """Current values under :data:`PARAM_NAMES` (log scales under 'scales', logits under 'opacities')."""
    return {name: param.detach() for name, param in scene.parameters_by_name().items() if name in PARAM_NAMES}


__all__ = ["DensifyConfig", "DensifyStrategy"]
