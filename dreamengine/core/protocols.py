"""The interfaces of the parts of one optimization step (docs/architecture.md):

    cameras = sampler.sample(B)                                        core/cameras.py
    render  = renderer(scene.render_inputs(), background, cameras, H, W)   Renderer -> RenderOut
    prompts = prompt_processor(cameras)                                PromptBatch
    guided  = guidance(render.rgb, prompts, cameras, step, generator)   Guidance -> GuidanceOut (uses a Teacher)
    loss    = guided.loss + regularizers; loss.backward(); optimizer.step()

Implementations: :mod:`dreamengine.scenes`, :mod:`dreamengine.renderers`, :mod:`dreamengine.teachers`,
:mod:`dreamengine.guidance`; :mod:`dreamengine.build` turns a config into them. Contract tests
(``tests/test_contracts.py``) run every registered implementation against these protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.render import RenderOut


class Field(Protocol):
    """A volume a volume renderer can march through (a NeRF scene is one)."""

    radius: float  # bounding sphere, centered at the origin

    def query(self, points: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
        """Density (>= 0) and albedo (in [0, 1]) at world points."""
        ...

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        ...

    def normals(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Outward unit normals."""
        ...


class Scene(Protocol):
    """What is optimized (an ``nn.Module``): NeRF, Gaussians or a mesh."""

    radius: float  # the scene's bound: renders and exports look inside [-radius, radius]^3

    def render_inputs(self) -> Any:
        """What its renderer takes: a Field (itself), SplatTensors or MeshTensors."""
        ...

    def param_groups(self, optim: Any, background: torch.nn.Module | None) -> list[dict[str, Any]]:
        """Adam parameter groups (with learning rates) of the scene, and of ``background`` when given."""
        ...

    def update_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set what the scene schedules by ``step``: learning rates, a NeRF's fading blob (most scenes: nothing)."""
        ...

    def regularizers(self) -> dict[str, Tensor]:
        """The scene's own weighted regularizer losses (a mesh's smoothness terms; usually none)."""
        ...

    def log_terms(self) -> dict[str, float]:
        """Numbers to log each step (a Gaussian scene's count)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class Renderer(Protocol):
    """Renders one scene type with a run's render settings; holds only renderer state (the occupancy grid)."""

    def __call__(self, inputs: Any, background: torch.nn.Module, cameras: Cameras, height: int, width: int, *,
                 generator: torch.Generator | None, perturb: bool) -> RenderOut:
        """Render ``cameras`` [B] at ``height`` x ``width``; ``perturb`` jitters samples (training)."""
        ...

    def after_step(self, inputs: Any, step: int) -> None:
        """Refresh renderer state after an optimizer step."""
        ...

    def after_training(self, inputs: Any) -> None:
        """Ready the renderer state for the renders after training (export, evaluation, report)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TeacherContext:
    """What a teacher is built with besides its own config: the run's framing of the object (cameras'
    distance and field of view, background; a teacher of a known world renders its data the same way), the
    prompt processor's view-label thresholds, and the device."""

    distance: float  # midpoint of camera.distance_range
    fovy_deg: float  # midpoint of camera.fovy_range
    background: tuple[float, float, float]  # render.background_color
    view_thresholds: tuple[float, float, float]  # prompt_processor front / back / overhead thresholds
    device: torch.device


class Teacher(Protocol):
    """A frozen diffusion model. It never trains and never receives parameter gradients.

    ``encode`` is differentiable (gradients flow from the diffusion space back to the render);
    ``predict_noise`` runs without gradients.
    """

    alphas_cumprod: Float[Tensor, " T"]  # cumulative product of (1 - beta_t), on the teacher's device
    num_train_timesteps: int  # T
    # Optional: the scheduler config's steps_offset (SD: 1); LucidDreamer's timestep t is index + offset. A teacher
    # without it counts as 0 (guidance.base.steps_offset).

    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Tensor:
        """rgb in [0, 1] -> the diffusion space z (latents for SD, pixels in [-1, 1] for pixel models)."""
        ...

    def decode(self, z: Tensor) -> Float[Tensor, "B 3 h w"]:
        """z -> rgb in [0, 1]."""
        ...

    def embed(self, prompts: list[str]) -> Tensor:
        """Text conditioning for each prompt, [P, ...]. The empty string is the unconditional branch."""
        ...

    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """Epsilon prediction for noisy z_t [B, ...] at integer timesteps t under embeddings [B, ...]."""
        ...


@dataclass
class GuidanceOut:
    """``loss`` is a scalar whose gradient on the render is the method's gradient; ``terms`` are logs.

    ``reduction`` says how ``loss`` was formed from the method's per-sample gradient g on the B encoded renders:
    ``mean`` (d loss / dz = g / B, threestudio's convention) or ``sum`` (d loss / dz = g, ``SpecifyGradient``).
    The trainer needs it to give each of several particles the gradient it would get alone.
    """

    loss: Tensor
    terms: dict[str, float] = field(default_factory=dict)
    reduction: str = "mean"


class Guidance(Protocol):
    """Turns a teacher's score of the renders into a gradient on them."""

    def __call__(self, rgb: Float[Tensor, "B H W 3"], prompts: PromptBatch, cameras: Cameras, step: int,
                 generator: torch.Generator | None = None) -> GuidanceOut:
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume exactly (VSD's score model; {} for stateless methods)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers the guidance steps inside ``__call__`` (VSD's score model); [] for the others."""
        ...


__all__ = ["Field", "Guidance", "GuidanceOut", "Renderer", "Scene", "Teacher", "TeacherContext"]
