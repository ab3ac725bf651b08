"""Run configuration: typed dataclasses (the schema), YAML files, ``key=value`` overrides, strict validation.

* :mod:`~dreamengine.config.run`: :class:`RunConfig` and its general sections (camera, render, optim, ...);
* :mod:`~dreamengine.config.guidance`, :mod:`~dreamengine.config.scenes`, :mod:`~dreamengine.config.teachers`,
  :mod:`~dreamengine.config.prompts`: the sections' dataclasses, one per choice of ``name``;
* :mod:`~dreamengine.config.loading`: :func:`load_config` (defaults <- YAML <- overrides), YAML out, hashes.

The schema imports no implementation (no torch, no mesh library, no diffusers): configs are checked before
anything heavy loads, and the implementations import their settings from here, never the other way round.
"""

from dreamengine.config.guidance import GUIDANCE_CONFIGS
from dreamengine.config.loading import (
    available_configs,
    config_hash,
    config_to_yaml,
    find_config,
    load_config,
)
from dreamengine.config.prompts import PromptConfig
from dreamengine.config.run import (
    DEFAULT_NAMES,
    POLYMORPHIC_SECTIONS,
    CameraConfig,
    CameraPhase,
    EvalConfig,
    ExportConfig,
    LoggingConfig,
    LossConfig,
    OptimConfig,
    ParallelConfig,
    RenderConfig,
    ReportConfig,
    RunConfig,
    TrainerConfig,
)
from dreamengine.config.scenes import SCENE_CONFIGS, DensifyConfig, GaussiansConfig, MeshSceneConfig, NeRFConfig
from dreamengine.config.teachers import (
    TEACHER_CONFIGS,
    DeepFloydIFTeacherConfig,
    MVDreamTeacherConfig,
    StableDiffusionTeacherConfig,
    ToyImageTeacherConfig,
    ToyWorldMultiViewTeacherConfig,
    ToyWorldOracleConfig,
    ToyWorldTeacherConfig,
    Zero123TeacherConfig,
)

__all__ = ["DEFAULT_NAMES", "GUIDANCE_CONFIGS", "POLYMORPHIC_SECTIONS", "SCENE_CONFIGS", "TEACHER_CONFIGS",
           "CameraConfig", "CameraPhase", "DeepFloydIFTeacherConfig", "DensifyConfig", "EvalConfig", "ExportConfig",
           "GaussiansConfig", "LoggingConfig", "LossConfig", "MVDreamTeacherConfig", "MeshSceneConfig", "NeRFConfig",
           "OptimConfig", "ParallelConfig", "PromptConfig", "RenderConfig", "ReportConfig", "RunConfig",
           "StableDiffusionTeacherConfig", "ToyImageTeacherConfig", "ToyWorldMultiViewTeacherConfig",
           "ToyWorldOracleConfig", "ToyWorldTeacherConfig", "TrainerConfig", "Zero123TeacherConfig",
           "available_configs", "config_hash", "config_to_yaml", "find_config", "load_config"]
