"""Guidance methods: ``guidance.name`` -> class. Every choice is listed here.

Each method is one file, readable top to bottom against its formula (module docstring: formula, sources,
differences from the reference code); the shared skeleton of a call is ``base.ScoreDistillation``. Settings
live in :mod:`dreamengine.config.guidance`.
"""

from dreamengine.guidance.asd import ASDGuidance
from dreamengine.guidance.bsd import BSDGuidance
from dreamengine.guidance.cds import CDSGuidance
from dreamengine.guidance.csd import CSDGuidance
from dreamengine.guidance.csm import CSMGuidance
from dreamengine.guidance.dsd import DSDGuidance
from dreamengine.guidance.ism import ISMGuidance
from dreamengine.guidance.mvdream_sds import MVDreamSDSGuidance
from dreamengine.guidance.nfsd import NFSDGuidance
from dreamengine.guidance.sds import SDSGuidance
from dreamengine.guidance.vsd import VSDGuidance

GUIDANCES = {"sds": SDSGuidance, "bsd": BSDGuidance, "csm": CSMGuidance, "ism": ISMGuidance, "csd": CSDGuidance,
             "nfsd": NFSDGuidance, "asd": ASDGuidance, "vsd": VSDGuidance, "mvdream-sds": MVDreamSDSGuidance,
             "cds": CDSGuidance, "dsd": DSDGuidance}

__all__ = ["GUIDANCES", "ASDGuidance", "BSDGuidance", "CDSGuidance", "CSDGuidance", "CSMGuidance", "DSDGuidance",
           "ISMGuidance", "MVDreamSDSGuidance", "NFSDGuidance", "SDSGuidance", "VSDGuidance"]
