"""The interface every frozen 2D diffusion teacher implements (see docs/architecture.md)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from dreamengine.cameras import Cameras


class Teacher(Protocol):
    """A frozen diffusion model. It never trains and never receives parameter gradients.

    ``encode`` is differentiable (gradients flow from the diffusion space back to the render);
    ``predict_noise`` runs without gradients.
    """

    alphas_cumprod: Tensor  # [T] cumulative product of (1 - beta_t), on the teacher's device
    num_train_timesteps: int  # T

    def encode(self, rgb: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> the diffusion space z (latents for SD, pixels in [-1, 1] for toy)."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """z -> [B, 3, H', W'] rgb in [0, 1]."""
        ...

    def embed(self, prompts: list[str]) -> Tensor:
        """Text conditioning for each prompt, [P, ...]. The empty string is the unconditional branch."""
        ...

    def predict_noise(self, z_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Cameras | None = None) -> Tensor:
        """Epsilon prediction for noisy z_t [B, ...] at integer timesteps t [B] under embeddings [B, ...]."""
        ...
