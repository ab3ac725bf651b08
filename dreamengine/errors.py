"""User-facing errors.

Anything a user can cause (a typo in a config, an unknown prompt word, a missing file, a corrupt
checkpoint) is raised as a :class:`DreamEngineError` whose message says what is wrong and how to fix it.
The CLI prints the message alone, without a traceback, and exits non-zero.
"""


class DreamEngineError(Exception):
    """An error caused by the user's input, with a message meant for them."""


class ConfigError(DreamEngineError):
    """An invalid config file, key, value or override."""


class PromptError(DreamEngineError):
    """A prompt the chosen teacher cannot understand."""


class CheckpointError(DreamEngineError):
    """A missing or corrupt checkpoint or run directory."""


class ExportError(DreamEngineError):
    """A scene that cannot be turned into the requested asset (for example: no surface)."""


class TrainingError(DreamEngineError):
    """Optimization failed in a way the user must act on (for example: repeated NaN losses)."""


class MeshFileError(DreamEngineError):
    """A mesh file that cannot be used as a scene (missing, not a mesh, empty, corrupt coordinates)."""


class OutOfMemory(TrainingError):
    """A CUDA out-of-memory error during a step (the run was checkpointed first)."""


class ImageFileError(DreamEngineError):
    """A reference image that cannot be used (missing, corrupt, too small, no object found in it)."""
