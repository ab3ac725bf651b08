"""A teacher whose outputs are known closed-form functions of its inputs (for guidance formula tests)."""

from __future__ import annotations

import torch
from torch import Tensor


class StubTeacher:
    """Pixel-space teacher: encode = 2 rgb - 1, eps = 0.5 z_t + sum(embedding) + 0.01 t / T."""

    num_train_timesteps = 1000

    def __init__(self) -> None:
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()

    def encode(self, rgb: Tensor) -> Tensor:
        return 2.0 * rgb - 1.0

    def decode(self, z: Tensor) -> Tensor:
        return ((z + 1.0) / 2.0).clamp(0, 1)

    def embed(self, prompts: list[str]) -> Tensor:
        return torch.tensor([[float(len(p)) / 100.0, 0.1] for p in prompts])

    def predict_noise(self, z_t: Tensor, t: Tensor, embeddings: Tensor, cameras=None) -> Tensor:
        shift = embeddings.sum(dim=-1) + 0.01 * t.float() / 1000.0
        return 0.5 * z_t + shift.view(-1, 1, 1, 1)
