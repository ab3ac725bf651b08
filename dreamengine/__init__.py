"""DreamEngine: text to 3D assets by score distillation.

The library API (imported on first use, so ``import dreamengine`` stays light)::

    import dreamengine
    asset = dreamengine.generate("a red cube")                      # one config (default: quickstart)
    asset = dreamengine.generate("a snowman", system="dreamgaussian-toy")
    asset = dreamengine.resume("runs/a-red-cube-20260101-120000")
    asset = dreamengine.refine("chair.glb", "a red chair", config="refine-sd")  # texture an existing mesh
"""

from typing import Any

from dreamengine.version import __version__

_API = ("Asset", "generate", "prepare", "refine", "resume", "open_run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from dreamengine import api

        return getattr(api, name)
    raise AttributeError(f"module 'dreamengine' has no attribute {name!r}")


__all__ = ["__version__", *_API]
