"""What rays see behind the scene (:class:`Background`) and the point lights of shaded renders."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dreamengine.core.cameras import Cameras
from dreamengine.core.layers import check_choice, mlp
from dreamengine.errors import ConfigError

BACKGROUND_MODES = ("solid", "mlp")


class Background(nn.Module):
    """The color seen where rays leave the scene: directions [..., 3] -> rgb [..., 3] in [0, 1].

    ``mode='solid'``: a fixed ``color`` (not trained). ``mode='mlp'``: a small trainable MLP on the unit view
    direction with a sigmoid output; it starts within ~1e-3 of ``color`` clamped to [0.02, 0.98] (the sigmoid
    cannot reach 0 or 1, and a saturated sigmoid would barely learn).
    """

    def __init__(self, mode: str = "solid", color: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 hidden_dim: int = 16) -> None:
        super().__init__()
        check_choice("background mode", mode, BACKGROUND_MODES)
        if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
            raise ConfigError(f"background color must be 3 numbers in [0, 1], got {tuple(color)}")
        self.mode = mode
        self.register_buffer("color", torch.tensor([float(c) for c in color]))
        self.network: nn.Sequential | None = None
        if mode == "mlp":
            self.network = mlp(3, hidden_dim, 1, 3)
            last = self.network[-1]
            nn.init.normal_(last.weight, std=1e-3)  # small, not zero: the first layer must get gradients
            start = torch.tensor([min(max(float(c), 0.02), 0.98) for c in color])
            with torch.no_grad():
                last.bias.copy_(torch.log(start / (1.0 - start)))

    def forward(self, directions: Float[Tensor, "*rays 3"]) -> Float[Tensor, "*rays 3"]:
        """[..., 3] (any length) -> [..., 3]."""
        if self.network is None:
            return self.color.to(directions.dtype).expand(*directions.shape[:-1], 3)
        unit = nn.functional.normalize(directions, dim=-1)
        return torch.sigmoid(self.network(unit))


class RandomColorBackground(nn.Module):
    """threestudio's ``random_aug``: one solid color per view, ``colors`` [B, 3], in place of the trained
    background for a training step (directions [B, ...rays, 3] -> rgb [B, ...rays, 3])."""

    def __init__(self, colors: Float[Tensor, "B 3"]) -> None:
        super().__init__()
        self.colors = colors

    def forward(self, directions: Float[Tensor, "B *rays 3"]) -> Float[Tensor, "B *rays 3"]:
        view = self.colors.to(directions).view(self.colors.shape[0], *([1] * (directions.dim() - 2)), 3)
        return view.expand(*directions.shape[:-1], 3)


def sample_light_positions(cameras: Cameras, generator: torch.Generator | None = None,
                           distance_range: tuple[float, float] = (0.8, 1.5),
                           direction_noise: float = 1.0) -> Float[Tensor, "B 3"]:
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


__all__ = ["BACKGROUND_MODES", "Background", "RandomColorBackground", "sample_light_positions"]
