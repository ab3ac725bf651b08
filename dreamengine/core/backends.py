"""Optional CUDA accelerators (nerfacc, tiny-cuda-nn, gsplat, nvdiffrast): imported lazily, chosen by one rule.

Every component with an accelerated path takes ``backend``: ``torch`` (the pure-PyTorch reference, runs
everywhere), ``cuda`` (the library; an error naming what is missing when it cannot run) or ``auto`` (the
library when it imports and the data is on a CUDA device, else torch).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from dreamengine.errors import ConfigError

BACKENDS = ("auto", "torch", "cuda")


def optional_import(module: str) -> Any | None:
    """The module if it imports, else None (CUDA extensions also fail with OSError when their .so is missing)."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError):
        return None


def resolve_backend(backend: str, device: torch.device | str, *, component: str, module: str,
                    install: str) -> str:
    """'torch' or 'cuda' for a requested ``backend`` of ``component`` (e.g. "volume renderer") whose CUDA path
    needs ``module`` (e.g. "nerfacc") on a CUDA ``device``. ``install`` says how to get the module."""
    if backend not in BACKENDS:
        raise ConfigError(f"{component} backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    available = torch.device(device).type == "cuda" and optional_import(module) is not None
    if backend == "cuda" and not available:
        raise ConfigError(f"{component} backend 'cuda' needs {module} and a CUDA device (device is {device}); "
                          f"{install}, or use backend 'torch' or 'auto'")
    return "cuda" if available else "torch"


__all__ = ["BACKENDS", "optional_import", "resolve_backend"]
