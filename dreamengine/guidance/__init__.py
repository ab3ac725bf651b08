"""Guidance methods: name -> (config dataclass, class). Every choice is listed here."""

from dreamengine.guidance.base import GuidanceOut
from dreamengine.guidance.sds import SDSConfig, SDSGuidance

GUIDANCE_CONFIGS = {"sds": SDSConfig}
GUIDANCES = {"sds": SDSGuidance}

__all__ = ["GUIDANCES", "GUIDANCE_CONFIGS", "GuidanceOut", "SDSConfig", "SDSGuidance"]
