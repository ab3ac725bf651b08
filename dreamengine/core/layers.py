"""Small building blocks shared by scenes and backgrounds."""

from __future__ import annotations

from torch import nn

from dreamengine.errors import ConfigError


def mlp(in_dim: int, hidden_dim: int, num_hidden_layers: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU, ``num_hidden_layers`` times, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(num_hidden_layers - 1):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
