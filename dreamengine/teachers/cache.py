"""Keep teachers loaded between runs in one process (batch workers): a Stable Diffusion teacher takes
seconds to minutes to load and gigabytes to hold, and consecutive prompts usually share it.

Off by default: a single run builds its teacher and drops it. ``keep_teachers_loaded()`` turns it on for
the process; then :func:`reuse_or_build` returns the teacher built earlier with identical arguments.
Teachers are frozen (guidance methods never change their weights), so sharing one is safe; a guidance that
attaches trainable adapters to the teacher's network (VSD) asks for a fresh teacher instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_kept: dict[str, Any] | None = None  # None: caching is off


def keep_teachers_loaded(enabled: bool = True) -> None:
    """Turn reuse on (or off, dropping what is held) for this process."""
    global _kept
    _kept = {} if enabled else None


def reuse_or_build(key: str, build: Callable[[], Any], shareable: bool = True) -> Any:
    """The teacher kept under ``key``, or ``build()`` (kept when reuse is on and ``shareable``). One teacher is
    kept at a time: a batch that switches models frees the previous one."""
    if _kept is None or not shareable:
        return build()
    if key not in _kept:
        _kept.clear()
        _kept[key] = build()
    return _kept[key]


__all__ = ["keep_teachers_loaded", "reuse_or_build"]
