"""Frozen 2D diffusion teachers: ``teacher.name`` -> class. Every choice is listed here.

Each class implements :class:`dreamengine.core.protocols.Teacher` and is built by
``Class.from_config(cfg.teacher, TeacherContext)`` (:func:`dreamengine.build.build_teacher`). The real
teachers import diffusers only when they load a model.
"""

from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher
from dreamengine.teachers.mvdream import MVDreamTeacher
from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher
from dreamengine.teachers.toyworld import ToyWorldTeacher
from dreamengine.teachers.toyworld_multiview import ToyWorldMultiViewTeacher
from dreamengine.teachers.toyworld_oracle import ToyWorldOracle

TEACHERS = {"toyworld": ToyWorldTeacher, "toyworld-oracle": ToyWorldOracle, "stable-diffusion": StableDiffusionTeacher,
            "deepfloyd-if": DeepFloydIFTeacher, "toyworld-multiview": ToyWorldMultiViewTeacher,
            "mvdream": MVDreamTeacher}

__all__ = ["TEACHERS", "DeepFloydIFTeacher", "MVDreamTeacher", "StableDiffusionTeacher", "ToyWorldMultiViewTeacher",
           "ToyWorldOracle", "ToyWorldTeacher"]
