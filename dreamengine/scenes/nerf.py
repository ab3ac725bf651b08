"""A NeRF scene: a hash-grid field of density and albedo inside a bounding sphere, plus its background.

The field maps a world point ``x`` (inside the bounding box ``[-radius, radius]^3``) to

    density(x) = activation(raw(x) + bias(x)),     albedo(x) = sigmoid(features(x))

where ``raw`` and ``features`` come from one small MLP on the hash-grid encoding of ``x`` normalized to
``[0, 1]^3``, and ``bias`` is the initial "blob" DreamFusion and threestudio use so that optimization starts
from a dense ball at the center and empty space near the boundary:

* ``blob_magic3d``:     ``scale * (1 - |x| / std)``            (threestudio's default, scale 10, std 0.5)
* ``blob_dreamfusion``: ``scale * exp(-|x|^2 / (2 std^2))``
* ``none``:             0

Both biases are added before the activation, as threestudio does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dreamengine.cameras import Cameras
from dreamengine.errors import ConfigError
from dreamengine.scenes.encoding import HashGridEncoding

DENSITY_ACTIVATIONS = ("softplus", "trunc_exp")
DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion", "none")
BACKGROUND_MODES = ("solid", "mlp")


@dataclass
class NeRFConfig:
    """Everything that defines a NeRF scene. Plain types only, so it embeds in the OmegaConf run config."""

    name: str = "nerf"
    radius: float = 1.0  # half side of the bounding box (and radius of the renderer's bounding sphere)
    # hash grid
    num_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378  # 16 levels from 16 to 4096
    encoding_backend: str = "auto"  # auto | torch | cuda (tiny-cuda-nn)
    # MLP
    hidden_dim: int = 64
    num_hidden_layers: int = 1
    # density
    density_activation: str = "softplus"  # softplus | trunc_exp
    density_bias: str = "blob_magic3d"  # blob_magic3d | blob_dreamfusion | none
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    # finite-difference step for normals, world units (threestudio's finite_difference_normal_eps)
    normal_eps: float = 0.01


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


def _mlp(in_dim: int, hidden_dim: int, num_hidden_layers: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(num_hidden_layers - 1):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")


class NeRFScene(nn.Module):
    """Density and albedo field inside ``[-radius, radius]^3``. All point arguments are world space [N, 3]."""

    def __init__(self, config: NeRFConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else NeRFConfig()
        _check_choice("scene.density_activation", config.density_activation, DENSITY_ACTIVATIONS)
        _check_choice("scene.density_bias", config.density_bias, DENSITY_BIASES)
        if config.radius <= 0 or config.density_blob_std <= 0 or config.normal_eps <= 0:
            raise ConfigError("scene.radius, scene.density_blob_std and scene.normal_eps must be > 0, got "
                              f"{config.radius}, {config.density_blob_std}, {config.normal_eps}")
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
        self.network = _mlp(self.encoding.output_dim, config.hidden_dim, config.num_hidden_layers, 4)

    def normalize(self, points: Tensor) -> Tensor:
        """World points [N, 3] in the bounding box -> [N, 3] in [0, 1] (the encoding clamps the rest)."""
        return (points / self.radius + 1.0) * 0.5

    def density_bias(self, points: Tensor) -> Tensor:
        """The pre-activation blob added to the raw density, [N, 3] -> [N]."""
        cfg = self.config
        if cfg.density_bias == "blob_magic3d":
            return cfg.density_blob_scale * (1.0 - points.norm(dim=-1) / cfg.density_blob_std)
        if cfg.density_bias == "blob_dreamfusion":
            squared_distance = (points * points).sum(-1)
            return cfg.density_blob_scale * torch.exp(-squared_distance / (2.0 * cfg.density_blob_std**2))
        return torch.zeros_like(points[..., 0])

    def _activate_density(self, pre_activation: Tensor) -> Tensor:
        if self.config.density_activation == "trunc_exp":
            return trunc_exp(pre_activation)
        return nn.functional.softplus(pre_activation)

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density [N] (>= 0) and albedo [N, 3] (in (0, 1)) from one encoding pass."""
        out = self.network(self.encoding(self.normalize(points)))  # [N, 4]
        density = self._activate_density(out[:, 0] + self.density_bias(points))
        return density, torch.sigmoid(out[:, 1:])

    def density(self, points: Tensor) -> Tensor:
        """Volume density [N, 3] -> [N]."""
        out = self.network(self.encoding(self.normalize(points)))
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

    def param_groups(self, lr_encoding: float, lr_network: float, lr_background: float = 0.0,
                     background: nn.Module | None = None) -> list[dict[str, Any]]:
        """Adam parameter groups: 'encoding' (the hash table), 'network' (the MLP), and 'background' when a
        ``background`` with trainable parameters is given. Every trainable parameter appears exactly once."""
        groups: list[dict[str, Any]] = [
            {"name": "encoding", "params": [p for p in self.encoding.parameters() if p.requires_grad],
             "lr": lr_encoding},
            {"name": "network", "params": [p for p in self.network.parameters() if p.requires_grad],
             "lr": lr_network},
        ]
        if background is not None:
            trainable = [p for p in background.parameters() if p.requires_grad]
            if trainable:
                groups.append({"name": "background", "params": trainable, "lr": lr_background})
        return groups


class Background(nn.Module):
    """The color seen where rays leave the scene: directions [..., 3] -> rgb [..., 3] in [0, 1].

    ``mode='solid'``: a fixed ``color`` (not trained). ``mode='mlp'``: a small trainable MLP on the unit view
    direction with a sigmoid output; it starts within ~1e-3 of ``color`` clamped to [0.02, 0.98] (the sigmoid
    cannot reach 0 or 1, and a saturated sigmoid would barely learn).
    """

    def __init__(self, mode: str = "solid", color: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 hidden_dim: int = 16) -> None:
        super().__init__()
        _check_choice("background mode", mode, BACKGROUND_MODES)
        if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
            raise ConfigError(f"background color must be 3 numbers in [0, 1], got {tuple(color)}")
        self.mode = mode
        self.register_buffer("color", torch.tensor([float(c) for c in color]))
        self.network: nn.Sequential | None = None
        if mode == "mlp":
            self.network = _mlp(3, hidden_dim, 1, 3)
            last = self.network[-1]
            nn.init.normal_(last.weight, std=1e-3)  # small, not zero: the first layer must get gradients
            start = torch.tensor([min(max(float(c), 0.02), 0.98) for c in color])
            with torch.no_grad():
                last.bias.copy_(torch.log(start / (1.0 - start)))

    def forward(self, directions: Tensor) -> Tensor:
        """[..., 3] (any length) -> [..., 3]."""
        if self.network is None:
            return self.color.to(directions.dtype).expand(*directions.shape[:-1], 3)
        unit = nn.functional.normalize(directions, dim=-1)
        return torch.sigmoid(self.network(unit))


def sample_light_positions(cameras: Cameras, generator: torch.Generator | None = None,
                           distance_range: tuple[float, float] = (0.8, 1.5),
                           direction_noise: float = 1.0) -> Tensor:
    """One point light per view near the camera's side of the object, [B, 3] (threestudio's 'dreamfusion'
    strategy): direction = normalize(camera position + N(0, direction_noise^2) noise), distance from the
    origin uniform in ``distance_range``. ``generator`` is a CPU generator: the numbers are drawn on the CPU
    (reproducible across devices) and the result moved to the cameras' device."""
    num = len(cameras)
    noise = torch.randn(num, 3, generator=generator) * direction_noise
    u = torch.rand(num, 1, generator=generator)
    distance = distance_range[0] + (distance_range[1] - distance_range[0]) * u
    direction = torch.nn.functional.normalize(cameras.position.detach().cpu().float() + noise, dim=-1)
    return (direction * distance).to(device=cameras.device, dtype=cameras.c2w.dtype)


__all__ = ["Background", "NeRFConfig", "NeRFScene", "sample_light_positions", "trunc_exp"]
