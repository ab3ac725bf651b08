"""Frozen 2D diffusion teachers: ``teacher.name`` -> class. Every choice is listed here.

Each class implements :class:`dreamengine.core.protocols.Teacher` and is built by
``Class.from_config(cfg.teacher, TeacherContext)`` (:func:`dreamengine.build.build_teacher`). The real
teachers import diffusers only when they load a model.
"""

from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher
from dreamengine.teachers.mvdream import MVDreamTeacher
from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher
from dreamengine.teachers.toy_image import ToyImageTeacher
from dreamengine.teachers.toyworld import ToyWorldTeacher
from dreamengine.teachers.toyworld_multiview import ToyWorldMultiViewTeacher
from dreamengine.teachers.toyworld_oracle import ToyWorldOracle
from dreamengine.teachers.zero123 import Zero123Teacher

TEACHERS = {"toyworld": ToyWorldTeacher, "toyworld-oracle": ToyWorldOracle, "stable-diffusion": StableDiffusionTeacher,
            "deepfloyd-if": DeepFloydIFTeacher, "toyworld-multiview": ToyWorldMultiViewTeacher,
            "mvdream": MVDreamTeacher, "toyworld-image": ToyImageTeacher, "zero123": Zero123Teacher}

__all__ = ["TEACHERS", "DeepFloydIFTeacher", "MVDreamTeacher", "StableDiffusionTeacher", "ToyImageTeacher",
           "ToyWorldMultiViewTeacher", "ToyWorldOracle", "ToyWorldTeacher", "Zero123Teacher"]
