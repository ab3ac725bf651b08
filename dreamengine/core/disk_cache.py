"""A small on-disk cache of tensors that are expensive to compute and never change for given settings (the
toy world's ground truth that every evaluation needs, for instance).

One safetensors file per entry, named by a hash of the settings that determine it (:func:`settings_key`), under
``$DREAMENGINE_CACHE/<kind>`` or ``~/.cache/dreamengine/<kind>``. Entries are written atomically (a temporary
file renamed into place, so a crash or a concurrent run never leaves a half-written entry) and read with
safetensors (no pickle, so a tampered file cannot run code). An unreadable entry, or one whose tensors do not
have the expected names, shapes or finite values, is ignored with a warning and recomputed (then rewritten); a
cache folder that cannot be written only costs the time saved (a warning, then the values are computed each
time).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dreamengine.core.files import atomic_path

_unwritable: set[Path] = set()  # folders already warned about in this process


def cache_root() -> Path:
    """``$DREAMENGINE_CACHE`` if the variable is set, else ``~/.cache/dreamengine``."""
    root = os.environ.get("DREAMENGINE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dreamengine"


def settings_key(settings: Any) -> str:
    """A hex digest of ``settings`` (anything ``json`` writes; keys sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_entry(path: Path, shapes: dict[str, tuple[int, ...] | None]) -> dict[str, Tensor] | None:
    """The tensors of the entry at ``path``, or None when it is missing or unusable (warned): every name of
    ``shapes`` must be there with that shape (None: any shape) and finite values."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        for name, shape in shapes.items():
            tensor = tensors[name]
            if shape is not None and tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} has values that are not finite")
    except Exception as error:  # noqa: BLE001 (whatever is wrong with the file, it is recomputed)
        warnings.warn(f"cache entry {path} is unreadable ({type(error).__name__}: {error}); recomputing it",
                      stacklevel=3)
        return None
    return tensors


def save_entry(path: Path, tensors: dict[str, Tensor], key: str) -> bool:
    """Write ``tensors`` to ``path`` atomically; False (with one warning per folder) when it cannot."""
    try:
        with atomic_path(path) as tmp:
            save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp),
                      metadata={"key": key})
    except OSError as error:
        if path.parent not in _unwritable:
            _unwritable.add(path.parent)
            warnings.warn(f"could not write the cache in {path.parent} ({error}); set DREAMENGINE_CACHE to a "
                          "writable folder to keep these values between runs", stacklevel=3)
        return False
    return True


def cached(kind: str, name: str, settings: Any, shapes: dict[str, tuple[int, ...] | None],
           compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The tensors ``compute()`` returns for ``settings``, from ``cache_root()/kind`` when an entry is there
    (``name`` prefixes the file name, for people looking at the folder). ``compute`` must be deterministic:
    the entry stands for it."""
    key = settings_key(settings)
    path = cache_root() / kind / f"{name}-{key[:24]}.safetensors"
    tensors = load_entry(path, shapes)
    if tensors is None:
        tensors = compute()
        save_entry(path, tensors, key)
    return tensors


__all__ = ["cache_root", "cached", "load_entry", "save_entry", "settings_key"]
