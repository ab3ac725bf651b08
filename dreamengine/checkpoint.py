"""Checkpoints: written atomically, loaded safely.

A checkpoint is a dict of tensors, numbers and strings saved with ``torch.save`` to a temporary file in
the same folder, flushed to disk, then renamed over the old one (``os.replace`` is atomic), so a crash
or a kill never leaves a half-written ``last.pt``. Loading uses ``torch.load(weights_only=True)``, which
cannot execute code from the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dreamengine.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically write ``state`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
