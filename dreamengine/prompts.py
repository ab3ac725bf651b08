"""Prompt processing: view-dependent prompts and the negative (unconditional) branch.

For each training view the processor picks a direction label from the camera (front / side / back /
overhead, thresholds as in guidance-math.md §6) and returns the teacher's embedding of the prompt with
that view's suffix (``"a red cube, front view"``), together with the embedding of the negative prompt,
which is the unconditional branch of classifier-free guidance (``""`` when no negative prompt is set).
Embeddings are computed once per direction at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamengine.cameras import Cameras, direction_labels
from dreamengine.errors import PromptError
from dreamengine.teachers.base import Teacher

DIRECTIONS = ("front", "side", "back", "overhead")


@dataclass
class PromptConfig:
    """How the user's prompt becomes per-view conditioning."""

    view_dependent: bool = True  # append ", front view" / ", side view" / ... by camera direction
    negative_prompt: str = ""  # the unconditional branch; "" is the true unconditional model
    front_threshold: float = 45.0  # |azimuth| below this is a front view (degrees)
    back_threshold: float = 45.0  # |azimuth| above 180 minus this is a back view
    overhead_threshold: float = 60.0  # elevation above this is an overhead view


@dataclass
class PromptBatch:
    """Conditioning for a batch of B views."""

    cond: Tensor  # [B, ...] embedding of the (view-dependent) prompt per view
    uncond: Tensor  # [B, ...] embedding of the negative prompt
    texts: list[str]  # the prompt text used for each view


def view_prompt(prompt: str, direction: str) -> str:
    """The threestudio suffix style: ``"{prompt}, {direction} view"``."""
    return f"{prompt}, {direction} view"


class PromptProcessor:
    """Turns a prompt into per-view :class:`PromptBatch` for a teacher."""

    def __init__(self, teacher: Teacher, prompt: str, cfg: PromptConfig) -> None:
        prompt = prompt.strip()
        if not prompt:
            raise PromptError("the prompt is empty: give a text prompt, for example: dreamengine generate 'a red cube'")
        self.prompt = prompt
        self.cfg = cfg
        texts = [view_prompt(prompt, d) for d in DIRECTIONS] if cfg.view_dependent else [prompt]
        with torch.no_grad():
            embeddings = teacher.embed([*texts, cfg.negative_prompt])
        self.texts = texts
        self.cond_embeddings = embeddings[:-1]  # [D, ...] one per direction (or one)
        self.uncond_embedding = embeddings[-1:]  # [1, ...]

    def __call__(self, cameras: Cameras) -> PromptBatch:
        if self.cfg.view_dependent:
            labels = direction_labels(cameras, self.cfg.front_threshold, self.cfg.back_threshold,
                                      self.cfg.overhead_threshold)
            index = torch.tensor([DIRECTIONS.index(label) for label in labels])
        else:
            index = torch.zeros(len(cameras), dtype=torch.long)
        cond = self.cond_embeddings[index.to(self.cond_embeddings.device)]
        uncond = self.uncond_embedding.expand(len(cameras), *self.uncond_embedding.shape[1:])
        return PromptBatch(cond=cond, uncond=uncond, texts=[self.texts[i] for i in index.tolist()])
