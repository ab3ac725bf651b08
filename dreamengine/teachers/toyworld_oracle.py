"""ToyWorldOracle: a teacher that knows the true image of the toy object from every camera (the ceiling).

Its denoiser returns the noise of the *true* render of the prompted object from the camera being scored:
for ``z_t = sqrt(a) x + sqrt(1 - a) eps``,

    x0_hat = truth(camera),   eps_hat = (z_t - sqrt(a) x0_hat) / sqrt(1 - a),

so the SDS gradient ``w(t) (eps_hat - eps) = w(t) sqrt(a / (1 - a)) (x - truth)`` is the gradient of a
noise-free reconstruction loss against ground truth, with a random positive weight per step. Training any
scene with it is plain multi-view reconstruction through the engine's own loop (same representation,
renderer, resolution, cameras, schedule and step budget), which is the best that scene can do there:
``bench/ceiling.py`` reports each guided result as a fraction of it. It is not a model of anything a
user has; it exists to measure.

The unconditional branch (the empty prompt) gets the same answer as the conditional one (the oracle knows the
object either way), so classifier-free guidance changes nothing. One object per batch.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from dreamengine.config.teachers import ToyWorldOracleConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import PromptError
from dreamengine.teachers.toyworld import BANK_SUPERSAMPLE, scaled_linear_alphas_cumprod, to_teacher_space
from dreamengine.toyworld import render as toy_render
from dreamengine.toyworld.objects import ToyObject
from dreamengine.toyworld.vocabulary import all_objects, parse_prompt, split_view


class ToyWorldOracle:
    """``teacher.name: toyworld-oracle`` (implements ``Teacher``; see the module docstring).

    Args:
        resolution: side of the square diffusion images (z is [B, 3, resolution, resolution]).
        background: RGB of the true renders' background (the run's render.background_color).
        device: where the predictions are returned.
    """

    num_train_timesteps: int = 1000

    def __init__(self, resolution: int = 32, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 device: str = "cpu") -> None:
        self.resolution = int(resolution)
        self.background = tuple(float(v) for v in background)
        self.device = torch.device(device)
        self.objects: list[ToyObject] = all_objects()
        self.alphas_cumprod = scaled_linear_alphas_cumprod(self.num_train_timesteps).float().to(self.device)

    @classmethod
    def from_config(cls, cfg: ToyWorldOracleConfig, context: TeacherContext) -> ToyWorldOracle:
        return cls(resolution=cfg.resolution, background=tuple(context.background), device=str(context.device))

    def encode(self, rgb: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> z [B, 3, res, res] in [-1, 1] (as the toy teacher); differentiable."""
        return to_teacher_space(rgb, self.resolution)

    def decode(self, z: Tensor) -> Tensor:
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """[P, 1]: the index of each prompt's object in the toy world, -1 for a prompt naming none ("")."""
        rows = []
        for prompt in prompts:
            object_prompt, _ = split_view(prompt)
            if not object_prompt.strip():
                rows.append(-1)
                continue
            name = parse_prompt(object_prompt).name
            rows.append(next(i for i, obj in enumerate(self.objects) if obj.name == name))
        return torch.tensor(rows, dtype=torch.float32, device=self.device)[:, None]

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """The noise of the true render of the batch's object from ``cameras`` [B] (repeated for copies of a
        batch, such as the conditional and unconditional halves), [B, 3, res, res]."""
        if cameras is None:
            raise ValueError("the toy-world oracle needs the cameras of the views it scores")
        batch = z_t.shape[0]
        named = {int(i) for i in embeddings.reshape(-1).tolist() if i >= 0}
        if len(named) != 1:
            raise PromptError(f"the toy-world oracle scores one object per batch, got {len(named)}")
        obj = self.objects[named.pop()]
        if batch % len(cameras):
            raise ValueError(f"{batch} images but {len(cameras)} cameras: copies of a batch repeat its cameras")
        cameras = cameras[torch.arange(batch, device=cameras.device) % len(cameras)]
        truth = toy_render.render_toy(obj, cameras.to("cpu"), self.resolution, self.resolution,
                                      background=self.background, supersample=BANK_SUPERSAMPLE)["rgb"]
        x0 = (truth.permute(0, 3, 1, 2) * 2.0 - 1.0).to(z_t.device, torch.float64)
        alpha = self.alphas_cumprod.to(z_t.device, torch.float64)[t.to(z_t.device).long()][:, None, None, None]
        eps = (z_t.double() - alpha.sqrt() * x0) / (1.0 - alpha).sqrt()
        return eps.to(z_t.dtype)
