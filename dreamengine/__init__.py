"""DreamEngine: text to 3D assets by score distillation."""

__version__ = "0.1.0"
