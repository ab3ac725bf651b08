"""Original (non-diffusers) checkpoint files: fetching one from the hub, reading its weights safely.

A ``.safetensors`` file holds tensors only. A PyTorch file is loaded with ``torch.load(weights_only=True)``, which
cannot run code from the file; but a training checkpoint (PyTorch Lightning's ``.ckpt``, as the original Zero123
weights are) also pickles Python objects beside its weights: callbacks, optimizer settings, numpy scalars. Those
load here as inert stand-ins (:func:`inert_stand_in`), objects of an empty class we define under the name the file
gives, so the weights load while nothing the file names is imported or called.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from dreamengine.teachers.stable_diffusion import explain_load_failure

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")  # what names a checkpoint file
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``) accepts a connection: False at once when it cannot be
    resolved or refuses, so a machine without internet is told so instead of waiting through the hub client's
    retries (about 25 s a file). Behind a proxy (``HTTPS_PROXY`` ...) the client is trusted to know better."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def download_checkpoint(repo: str, filename: str, revision: str | None) -> Path:
    """A checkpoint file of a hub repo: from the Hugging Face cache when it is there (no network), else downloaded
    (``hf_hub_download``) when the hub is reachable. A failure (offline, gated, missing) is explained in one
    :class:`~dreamengine.errors.ModelNotFoundError` that says how to fetch the file elsewhere."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            if not hub_reachable():
                raise
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except Exception as error:
        if type(error).__module__.startswith(("huggingface_hub", "requests", "httpx")) or isinstance(error, OSError):
            raise explain_load_failure(repo, revision, error, filename=filename) from None
        raise


def inert_stand_in(name: str) -> tuple[type, str]:
    """``(class, "module.QualName")`` for ``torch.serialization.safe_globals``: an empty class whose construction
    and ``__setstate__`` ignore their arguments, registered under ``name``."""
    module, _, qualname = name.rpartition(".")

    def ignore(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    stand_in = type(qualname, (), {"__init__": ignore, "__setstate__": ignore, "__module__": module or "builtins"})
    return stand_in, name


def load_pickled_weights(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with any other pickled object an inert stand-in."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names:
            raise
        with torch.serialization.safe_globals([inert_stand_in(name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict of a ``.safetensors`` or PyTorch checkpoint file (a ``state_dict`` entry is unwrapped).
    Raises what the readers raise for a corrupt file, and ``TypeError`` when the file holds no state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_pickled_weights(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"the file holds a {type(state).__name__}, not a state dict")
    return {key: value for key, value in state.items() if isinstance(value, Tensor)}


__all__ = ["CHECKPOINT_SUFFIXES", "PROXY_VARIABLES", "download_checkpoint", "hub_reachable", "inert_stand_in",
           "load_pickled_weights", "read_state_dict"]
