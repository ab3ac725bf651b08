"""VSD's particle score model eps_phi(x_t, t, y, c): a second diffusion model fitted to the current renders.

Which model depends on what the teacher offers, decided in one place, :func:`build_score_model`:

* Teachers with a diffusers UNet (Stable Diffusion, DeepFloyd IF: they have ``add_lora_adapter``):
  :class:`LoRAScoreModel`, a LoRA (peft, rank r, every attention projection ``to_q/to_k/to_v/to_out.0``)
  on the teacher's own UNet plus a camera MLP added to the UNet's time embedding (diffusers' class-embedding
  path, as threestudio installs its ``TimestepEmbedding(16, 1280)``). The teacher's frozen pass runs with
  both switched off (teachers/stable_diffusion.py ``adapter_enabled``). Its prediction type is the teacher's.
* Every other teacher (the toy world: pixel space, 3 x R x R in [-1, 1]): :class:`PixelScoreUNet`, a small
  UNet trained from scratch (eps-prediction), with the same camera MLP added to its time embedding.

The camera condition is the flattened 4x4 camera-to-world matrix (threestudio's ``camera_condition_type``
``extrinsics``), 16 numbers; all zeros is the "no camera" input of the LoRA's classifier-free guidance.

Both models start from a known point: LoRA B and the camera MLP's output layer are zero, so the LoRA model
starts as the teacher's own (camera-free) prediction; the pixel UNet's output layer is zero, so it starts
predicting eps = 0. Their initial weights come from a fixed seed, not from the global random state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamengine.core.cameras import Cameras

CAMERA_DIM = 16  # a flattened 4x4 c2w
INIT_SEED = 0  # the score models' initial weights are drawn from this seed, apart from the run's random state


def camera_condition(cameras: Cameras) -> Tensor:
    """The flattened camera-to-world matrices [B, 16] (float32): the score model's camera input."""
    return cameras.c2w.reshape(len(cameras), CAMERA_DIM).float()


class CameraEmbedding(nn.Module):
    """Camera [B, 16] -> [B, width]: Linear, SiLU, Linear (the shape of diffusers' TimestepEmbedding).

    The output layer starts at zero, so an untrained embedding adds nothing to the time embedding.
    """

    def __init__(self, width: int, in_features: int = CAMERA_DIM) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, width)
        self.linear_2 = nn.Linear(width, width)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, camera: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(camera.to(self.linear_1.weight.dtype))))


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style timestep features [B, dim] (cosines then sines) for integer t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding [B, E] added between the convolutions; 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class PixelScoreUNet(nn.Module):
    """A small pixel-space eps-prediction UNet for teachers without one (the toy world).

    Three resolutions (R, R/2, R/4; any R), channel widths (w, 2w, 4w), one residual block per level on each
    side, skip connections by concatenation. Conditioning: sinusoidal time features through an MLP, plus the
    :class:`CameraEmbedding` of the camera. The text embedding is not used: a run has one prompt, and the
    model only ever learns the distribution of that run's renders.
    """

    kind = "pixel"
    prediction_type = "epsilon"

    def __init__(self, channels: int = 3, width: int = 16, emb_dim: int = 128) -> None:
        super().__init__()
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.camera = CameraEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down1 = ResBlock(width, width, emb_dim)
        self.down2 = ResBlock(width, 2 * width, emb_dim)
        self.mid = ResBlock(2 * width, 4 * width, emb_dim)
        self.up2 = ResBlock(6 * width, 2 * width, emb_dim)
        self.up1 = ResBlock(3 * width, width, emb_dim)
        self.norm_out = nn.GroupNorm(8, width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, z_t: Tensor, t: Tensor, embeddings: Tensor, camera: Tensor) -> Tensor:
        """eps [B, C, R, R] for z_t [B, C, R, R], integer t [B] and camera [B, 16]; ``embeddings`` is ignored."""
        emb = self.time_mlp(sinusoidal_embedding(t.reshape(-1).expand(z_t.shape[0]), self.width)) + self.camera(camera)
        h1 = self.down1(self.conv_in(z_t), emb)  # R
        h2 = self.down2(F.avg_pool2d(h1, 2, ceil_mode=True), emb)  # R/2
        h = self.mid(F.avg_pool2d(h2, 2, ceil_mode=True), emb)  # R/4
        h = self.up2(torch.cat([F.interpolate(h, size=h2.shape[-2:], mode="nearest"), h2], dim=1), emb)
        h = self.up1(torch.cat([F.interpolate(h, size=h1.shape[-2:], mode="nearest"), h1], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class LoRAScoreModel:
    """A LoRA on the teacher's UNet plus a camera embedding (the teacher must offer ``add_lora_adapter``,
    ``predict_with_adapter``, ``time_embedding_dim`` and ``prediction_type``)."""

    kind = "lora"

    def __init__(self, teacher: Any, rank: int, alpha: float) -> None:
        self.teacher = teacher
        self.prediction_type = str(teacher.prediction_type)
        self.lora = teacher.add_lora_adapter(rank, alpha)  # name -> parameter, inside the teacher's UNet
        self.camera = CameraEmbedding(int(teacher.time_embedding_dim)).to(teacher.alphas_cumprod.device)

    def __call__(self, z_t: Tensor, t: Tensor, embeddings: Tensor, camera: Tensor) -> Tensor:
        """Raw UNet output (``prediction_type``) [B, ...] with the LoRA and the camera embedding enabled."""
        return self.teacher.predict_with_adapter(z_t, t, embeddings, self.camera, camera)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.lora.values(), *self.camera.parameters()]

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"lora.{name}": param.detach().clone() for name, param in self.lora.items()}
        state.update({f"camera.{name}": value.detach().clone() for name, value in self.camera.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise KeyError(f"VSD LoRA state does not match (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for name, param in self.lora.items():
                param.copy_(state[f"lora.{name}"])
        self.camera.load_state_dict({name[len("camera."):]: value for name, value in state.items()
                                     if name.startswith("camera.")})


def build_score_model(teacher: Any, lora_rank: int, lora_alpha: float,
                      pixel_width: int) -> LoRAScoreModel | PixelScoreUNet:
    """The particle score model for ``teacher``: a LoRA on its UNet when it offers one, else a pixel UNet.

    The initial weights are drawn under a fixed seed with the global random state saved and restored.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if hasattr(teacher, "add_lora_adapter"):
            return LoRAScoreModel(teacher, lora_rank, lora_alpha)
        return PixelScoreUNet(channels=3, width=pixel_width).to(teacher.alphas_cumprod.device)


def velocity(z0: Tensor, noise: Tensor, abar: Tensor) -> Tensor:
    """The v-prediction target ``sqrt(abar) eps - sqrt(1 - abar) z0`` for abar [B] and z0, noise [B, ...]."""
    a = abar.to(z0.dtype).view(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * noise - (1.0 - a).sqrt() * z0


def training_target(prediction_type: str, z0: Tensor, noise: Tensor, abar: Tensor) -> Tensor:
    """What a model of ``prediction_type`` learns to output for x_t = q(z0, noise, t): eps, v or z0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(z0, noise, abar)
    if prediction_type == "sample":
        return z0
    raise ValueError(f"unknown prediction type {prediction_type!r}")  # unreachable: teachers validate it


__all__ = ["CAMERA_DIM", "CameraEmbedding", "LoRAScoreModel", "PixelScoreUNet", "build_score_model",
           "camera_condition", "training_target", "velocity"]
