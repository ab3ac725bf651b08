"""Checkpoints: written atomically, loaded safely.

A checkpoint is a dict of tensors, numbers and strings saved with ``torch.save`` and written atomically
(:func:`dreamengine.core.files.atomic_path`), so a crash or a kill never leaves a half-written ``last.pt``.
Loading uses ``torch.load(weights_only=True)``, which cannot execute code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamengine.core.files import atomic_path
from dreamengine.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically write ``state`` to ``path``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, or raise CheckpointError saying why not."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not saved one yet (it saves every "
                              "trainer.checkpoint_every steps and when stopped with Ctrl-C)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a DreamEngine checkpoint ({type(error).__name__}). "
            "If the run has another checkpoint, move this file away and resume; otherwise start the run "
            "again with dreamengine generate.") from None
    if not isinstance(state, dict) or "step" not in state or "scenes" not in state:
        raise CheckpointError(f"checkpoint {path} is not a DreamEngine checkpoint (it lacks 'step' and 'scenes')")
    return state


def scenes_state_dict(scenes: list[torch.nn.Module], background: torch.nn.Module,
                      renderers: list[Any]) -> dict[str, Any]:
    """What a checkpoint holds of the scenes: their parameters, the background and the renderers' state."""
    return {"scenes": [scene.state_dict() for scene in scenes], "background": background.state_dict(),
            "renderers": [renderer.state_dict() for renderer in renderers]}


def restore_scenes(state: dict[str, Any], path: Path, scenes: list[torch.nn.Module], background: torch.nn.Module,
                   renderers: list[Any]) -> None:
    """Load the scenes, background and renderer state of a checkpoint ``state`` read from ``path``."""
    try:
        if len(state["scenes"]) != len(scenes):
            raise ValueError(f"it holds {len(state['scenes'])} particle(s), the config asks for {len(scenes)}")
        for scene, scene_state in zip(scenes, state["scenes"], strict=True):
            scene.load_state_dict(scene_state)
        background.load_state_dict(state["background"])
        for renderer, renderer_state in zip(renderers, state["renderers"], strict=True):
            renderer.load_state_dict(renderer_state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise mismatch(path, error) from None


def mismatch(path: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint whose contents do not fit the run's config."""
    return CheckpointError(f"checkpoint {path} does not match this run's config ({str(error).splitlines()[0]}); "
                           "was config.yaml edited after the run started?")
