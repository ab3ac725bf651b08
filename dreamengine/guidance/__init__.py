"""Guidance methods: name -> (config dataclass, class). Every choice is listed here."""

from dreamengine.guidance.asd import ASDConfig, ASDGuidance
from dreamengine.guidance.base import GuidanceOut
from dreamengine.guidance.bsd import BSDConfig, BSDGuidance
from dreamengine.guidance.csd import CSDConfig, CSDGuidance
from dreamengine.guidance.csm import CSMConfig, CSMGuidance
from dreamengine.guidance.ism import ISMConfig, ISMGuidance
from dreamengine.guidance.nfsd import NFSDConfig, NFSDGuidance
from dreamengine.guidance.sds import SDSConfig, SDSGuidance
from dreamengine.guidance.vsd import VSDConfig, VSDGuidance

GUIDANCE_CONFIGS = {"sds": SDSConfig, "bsd": BSDConfig, "csm": CSMConfig, "ism": ISMConfig, "csd": CSDConfig,
                    "nfsd": NFSDConfig, "asd": ASDConfig, "vsd": VSDConfig}
GUIDANCES = {"sds": SDSGuidance, "bsd": BSDGuidance, "csm": CSMGuidance, "ism": ISMGuidance, "csd": CSDGuidance,
             "nfsd": NFSDGuidance, "asd": ASDGuidance, "vsd": VSDGuidance}

__all__ = ["GUIDANCES", "GUIDANCE_CONFIGS", "ASDConfig", "ASDGuidance", "BSDConfig", "BSDGuidance", "CSDConfig",
           "CSDGuidance", "CSMConfig", "CSMGuidance", "GuidanceOut", "ISMConfig", "ISMGuidance", "NFSDConfig",
           "NFSDGuidance", "SDSConfig", "SDSGuidance", "VSDConfig", "VSDGuidance"]
