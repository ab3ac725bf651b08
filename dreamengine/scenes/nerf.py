"""A NeRF scene: a hash-grid field of density and albedo inside a bounding sphere, plus its background.

The field maps a world point ``x`` (inside the bounding box ``[-radius, radius]^3``) to

    density(x) = activation(raw(x) + bias(x)),     albedo(x) = sigmoid(features(x))

where ``raw`` and ``features`` come from one small MLP on the hash-grid encoding of ``x`` normalized to
``[0, 1]^3``, and ``bias`` is the initial "blob" DreamFusion and threestudio use so that optimization starts
from a dense ball at the center and empty space near the boundary:

* ``blob_magic3d``:     ``scale * (1 - |x| / std)``            (threestudio's default, scale 10, std 0.5)
* ``blob_dreamfusion``: ``scale * exp(-|x|^2 / (2 std^2))``
* ``none``:             0

Both biases are added before the activation, as threestudio does. With ``density_blob_fade_steps`` N > 0
the blob's positive part (the dense ball) fades out linearly over the first N training steps, while its
negative part (empty space near the boundary) stays: the field then has to hold every bit of density itself,
so material the guidance never asked for (the ball that fills a torus's hole) disappears instead of staying
as the initialization left it. Its weight ``blob_weight`` is a buffer, saved in checkpoints.

With ``progressive_start_level`` S > 0 the hash grid is a progressive band (threestudio's
ProgressiveBandHashGrid, coarse to fine for smooth normals): at step ``t`` only the first

    min(S + max(t - progressive_start_step, 0) // progressive_update_steps, num_levels)

levels are active, the others' features multiplied by 0 (see :mod:`dreamengine.scenes.encoding`). The count
``active_levels`` is a buffer, saved in checkpoints, set by ``update_schedules`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dreamengine.config.run import OptimConfig
from dreamengine.config.scenes import DENSITY_ACTIVATIONS, DENSITY_BIASES, NeRFConfig
from dreamengine.core.layers import check_choice, mlp
from dreamengine.errors import ConfigError
from dreamengine.export.marching import sample_density_grid
from dreamengine.scenes.encoding import HashGridEncoding


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): large raw densities cannot blow the gradient up."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """Exponential with a gradient clamped at exp(15) (Instant-NGP's density activation)."""
    return _TruncExp.apply(x)


class NeRFScene(nn.Module):
    """Density and albedo field inside ``[-radius, radius]^3``. All point arguments are world space [N, 3]."""

    def __init__(self, config: NeRFConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else NeRFConfig()
        check_choice("scene.density_activation", config.density_activation, DENSITY_ACTIVATIONS)
        check_choice("scene.density_bias", config.density_bias, DENSITY_BIASES)
        if config.radius <= 0 or config.density_blob_std <= 0 or config.normal_eps <= 0:
            raise ConfigError("scene.radius, scene.density_blob_std and scene.normal_eps must be > 0, got "
                              f"{config.radius}, {config.density_blob_std}, {config.normal_eps}")
        if config.progressive_start_level > 0 and (config.progressive_update_steps < 1
                                                   or config.progressive_start_level > config.num_levels):
            raise ConfigError("scene.progressive_start_level > 0 (a progressive band) needs "
                              "scene.progressive_update_steps >= 1 and progressive_start_level <= num_levels, got "
                              f"{config.progressive_update_steps}, {config.progressive_start_level}")
        if config.hidden_dim < 1 or config.num_hidden_layers < 1:
            raise ConfigError("scene.hidden_dim and scene.num_hidden_layers must be >= 1, got "
                              f"{config.hidden_dim}, {config.num_hidden_layers}")
        self.config = config
        self.radius = float(config.radius)
        self.encoding = HashGridEncoding(
            num_levels=config.num_levels, features_per_level=config.features_per_level,
            log2_hashmap_size=config.log2_hashmap_size, base_resolution=config.base_resolution,
            per_level_scale=config.per_level_scale, backend=config.encoding_backend)
        # One MLP for both heads: output 0 is the raw density, outputs 1..3 the albedo logits.
        self.network = mlp(self.encoding.output_dim, config.hidden_dim, config.num_hidden_layers, 4)
        self.register_buffer("blob_weight", torch.tensor(1.0))  # the blob's positive part's weight (fading)
        self._register_load_state_dict_pre_hook(keep_blob_weight_of_old_checkpoints)
        # the hash-grid levels in use (the progressive band; every level when it is off)
        self.register_buffer("active_levels", torch.tensor(self.band_at(0)))
        self._register_load_state_dict_pre_hook(partial(keep_all_levels_of_old_checkpoints,
                                                        num_levels=config.num_levels))

    @property
    def progressive(self) -> bool:
        return self.config.progressive_start_level > 0

    def band_at(self, step: int) -> int:
        """The number of active hash-grid levels at training step ``step`` (steps done before it)."""
        cfg = self.config
        if not self.progressive:
            return cfg.num_levels
        grown = max(step - cfg.progressive_start_step, 0) // cfg.progressive_update_steps
        return min(cfg.progressive_start_level + grown, cfg.num_levels)

    def encode(self, points: Tensor) -> Tensor:
        """The hash-grid features of world points [N, 3] (the inactive levels' zeroed when progressive)."""
        return self.encoding(self.normalize(points), self.active_levels if self.progressive else None)

    def normalize(self, points: Tensor) -> Tensor:
        """World points [N, 3] in the bounding box -> [N, 3] in [0, 1] (the encoding clamps the rest)."""
        return (points / self.radius + 1.0) * 0.5

    def density_bias(self, points: Tensor) -> Tensor:
        """The pre-activation blob added to the raw density, [N, 3] -> [N]."""
        cfg = self.config
        if cfg.density_bias == "blob_magic3d":
            blob = cfg.density_blob_scale * (1.0 - points.norm(dim=-1) / cfg.density_blob_std)
        elif cfg.density_bias == "blob_dreamfusion":
            squared_distance = (points * points).sum(-1)
            blob = cfg.density_blob_scale * torch.exp(-squared_distance / (2.0 * cfg.density_blob_std**2))
        else:
            return torch.zeros_like(points[..., 0])
        if cfg.density_blob_fade_steps == 0:
            return blob
        return blob.clamp(max=0.0) + self.blob_weight * blob.clamp(min=0.0)

    def _activate_density(self, pre_activation: Tensor) -> Tensor:
        if self.config.density_activation == "trunc_exp":
            return trunc_exp(pre_activation)
        return nn.functional.softplus(pre_activation)

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density [N] (>= 0) and albedo [N, 3] (in (0, 1)) from one encoding pass."""
        out = self.network(self.encode(points))  # [N, 4]
        density = self._activate_density(out[:, 0] + self.density_bias(points))
        return density, torch.sigmoid(out[:, 1:])

    def density(self, points: Tensor) -> Tensor:
        """Volume density [N, 3] -> [N]."""
        out = self.network(self.encode(points))
        return self._activate_density(out[:, 0] + self.density_bias(points))

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N, 3] -> [N, 3] in (0, 1)."""
        return self.query(points)[1]

    def normals(self, points: Tensor) -> Tensor:
        """Outward unit normals, [N, 3] -> [N, 3]: minus the normalized density gradient.

        The gradient is a central difference with step ``config.normal_eps`` (world units, 0.01 by default:
        threestudio's ``finite_difference_normal_eps``, about a cell of a 100^3 grid over the scene), so it
        costs 6 density evaluations per point. The result is differentiable w.r.t. the field's parameters
        (for the orientation loss). Where the gradient vanishes the normal is 0.
        """
        eps = self.config.normal_eps
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps  # [3, 3]
        shifted = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)  # [N, 6, 3]
        shifted_density = self.density(shifted.reshape(-1, 3)).view(-1, 6)
        gradient = (shifted_density[:, :3] - shifted_density[:, 3:]) / (2.0 * eps)  # [N, 3]
        return nn.functional.normalize(-gradient, dim=-1, eps=1e-12)

    def param_groups(self, optim: OptimConfig | None = None,
                     background: nn.Module | None = None) -> list[dict[str, Any]]:
        """Adam parameter groups: 'encoding' (the hash table, ``optim.lr_encoding``), 'network' (the MLP,
        ``optim.lr_network``), and 'background' (``optim.lr_background``) when a ``background`` with trainable
        parameters is given. Every trainable parameter appears exactly once."""
        optim = optim or OptimConfig()
        groups: list[dict[str, Any]] = [
            {"name": "encoding", "params": [p for p in self.encoding.parameters() if p.requires_grad],
             "lr": optim.lr_encoding},
            {"name": "network", "params": [p for p in self.network.parameters() if p.requires_grad],
             "lr": optim.lr_network},
        ]
        return groups + background_groups(background, optim.lr_background)

    # ---- the Scene protocol's other parts (dreamengine.core.protocols.Scene)
    def render_inputs(self) -> NeRFScene:
        """The volume renderer marches the scene itself (it is a Field)."""
        return self

    def update_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Constant learning rates; the blob's positive part fades over ``density_blob_fade_steps``; the
        progressive band's level count for the next step (``step`` steps done)."""
        if self.config.density_blob_fade_steps > 0:
            self.blob_weight.fill_(max(0.0, 1.0 - step / self.config.density_blob_fade_steps))
        if self.progressive:
            self.active_levels.fill_(self.band_at(step))

    def regularizers(self) -> dict[str, Tensor]:
        return {}

    def log_terms(self) -> dict[str, float]:
        return {}

    def density_grid(self, resolution: int) -> np.ndarray:
        """The density on the export grid over the bounding cube, [R, R, R] (point queries)."""
        return sample_density_grid(self.density, self.radius, resolution)

    def export_albedo(self, resolution: int) -> Callable[[Tensor], Tensor]:
        """What texture baking evaluates: the albedo itself (point queries are fast for a NeRF)."""
        return self.albedo


def keep_blob_weight_of_old_checkpoints(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before the blob could fade have no ``blob_weight``: theirs was 1."""
    state.setdefault(prefix + "blob_weight", torch.tensor(1.0))


def keep_all_levels_of_old_checkpoints(state: dict[str, Any], prefix: str, *args: Any, num_levels: int) -> None:
    """Checkpoints written before the progressive band existed have no ``active_levels``: all were active."""
    state.setdefault(prefix + "active_levels", torch.tensor(num_levels))


def background_groups(background: nn.Module | None, lr: float) -> list[dict[str, Any]]:
    """The 'background' Adam group of a trainable ``background`` (none for a solid color or no background)."""
    trainable = [p for p in background.parameters() if p.requires_grad] if background is not None else []
    return [{"name": "background", "params": trainable, "lr": lr}] if trainable else []


__all__ = ["NeRFScene", "background_groups", "trunc_exp"]
