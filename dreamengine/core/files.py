"""Atomic writes: every file DreamEngine writes appears whole or not at all.

A file is written to a temporary name in its destination folder, flushed to disk, then renamed over the
destination (``os.replace`` is atomic on one file system), so a crash, a kill or a full disk never leaves a
half-written checkpoint, mesh, cache entry, log or page behind, and readers never see a partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write it inside the block. On success it is flushed to disk
    and renamed to ``path``; on any error it is removed and ``path`` is left as it was.

    For writers that want a file name (``torch.save``, safetensors' ``save_file``)::

        with atomic_path(folder / "last.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; what DreamEngine writes is meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (with a final newline), written atomically."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


__all__ = ["atomic_path", "atomic_write", "write_json"]
