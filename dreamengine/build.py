"""Config -> objects: the one place where a run's settings become its teacher, scenes, renderers, background,
densifiers, guidance and optimizer.

Every choice is looked up in a plain dict of its sub-package (``TEACHERS``, ``SCENES``, ``RENDERERS``,
``GUIDANCES``) under the config section's ``name``; nothing registers itself and nothing dispatches on types.
The order of construction is fixed (teacher, prompts, scenes, background, guidance), because the scenes'
random initial weights come from the global generator seeded with the run's seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamengine.checkpoint import load_checkpoint, restore_scenes
from dreamengine.config import GUIDANCE_CONFIGS, TEACHER_CONFIGS, PromptConfig, RunConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import Cameras, cameras_from_spherical
from dreamengine.core.protocols import Guidance, Renderer, Scene, Teacher, TeacherContext
from dreamengine.core.render import render_fixed
from dreamengine.errors import ConfigError, DreamEngineError, TrainingError
from dreamengine.guidance import GUIDANCES
from dreamengine.images import ReferenceImage, load_reference_image
from dreamengine.prompts import PromptProcessor
from dreamengine.renderers import RENDERERS
from dreamengine.runs import open_run_dir, trained_run_dir
from dreamengine.scenes import SCENES
from dreamengine.scenes.densify import DensifyStrategy
from dreamengine.scenes.gaussian_init import gaussians_at
from dreamengine.scenes.gaussians import GaussianScene
from dreamengine.schedules import schedule_max
from dreamengine.teachers import TEACHERS
from dreamengine.teachers.cache import reuse_or_build

GUIDANCES_THAT_ADAPT_THE_TEACHER = ("vsd", "dsd")  # they attach trainable adapters to the teacher's network
DENSIFIED_SCENES = ("gaussians",)  # scene types whose primitives are cloned, split and pruned during training
SCENES_WITHOUT_NORMALS = ("gaussians",)  # scene types whose renderer makes no normal maps


def resolve_device(name: str) -> torch.device:
    """The run's device: ``auto`` is CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device '{name}' was asked for but PyTorch sees no CUDA GPU; use device=cpu or "
                            "install a CUDA build of torch")
    return torch.device(name)


# -------------------------------------------------------------------------------------------------- teacher
def teacher_context(cfg: RunConfig, device: torch.device) -> TeacherContext:
    """The run's framing (camera distance and field of view midpoints, background) and view thresholds."""
    pp = cfg.prompt_processor
    distance, fovy = cfg.camera.framing()
    return TeacherContext(distance=distance, fovy_deg=fovy,
                          background=tuple(cfg.render.background_color),
                          view_thresholds=(pp.front_threshold, pp.back_threshold, pp.overhead_threshold),
                          device=device)


def build_teacher(cfg: RunConfig, device: torch.device, reference: ReferenceView | None = None) -> Teacher:
    """``TEACHERS[teacher.name].from_config``; a batch worker keeps it loaded between runs that share it
    (:mod:`dreamengine.teachers.cache`), unless the guidance adapts the teacher's network (VSD) or the teacher is
    conditioned on this run's reference image. An image-conditioned teacher gets ``reference`` (image-to-3D)."""
    context = teacher_context(cfg, device)
    teacher_class = TEACHERS[cfg.teacher.name]
    image_conditioned = getattr(teacher_class, "image_conditioned", False)
    if image_conditioned and reference is None:
        raise ConfigError(f"teacher.name={cfg.teacher.name} is conditioned on a reference image: give one with "
                          "dreamengine generate --image REF.png (image.path)")
    teacher = reuse_or_build(repr((cfg.teacher, context)), lambda: teacher_class.from_config(cfg.teacher, context),
                             shareable=cfg.guidance.name not in GUIDANCES_THAT_ADAPT_THE_TEACHER
                             and not image_conditioned)
    if image_conditioned and reference is not None:
        camera = reference.cameras
        teacher.set_reference(reference.image.rgb.permute(2, 0, 1), float(camera.elevation[0]),
                              float(camera.azimuth[0]), float(camera.distance[0]))
    elif reference is not None and getattr(cfg.teacher, "ip_adapter", None):  # a visual prompt (IP-Adapter)
        teacher.set_visual_prompt(reference.image.rgb.permute(2, 0, 1))
    return teacher


# ------------------------------------------------------------------------------------------------ reference
@dataclass
class ReferenceView:
    """Image-to-3D: the reference image (framed at the training render size) and the camera it is seen from."""

    image: ReferenceImage  # tensors on the run's device
    cameras: Cameras  # [1], on the run's device


def reference_camera(cfg: RunConfig) -> Cameras:
    """The reference camera [1]: ``image.elevation_deg`` / ``azimuth_deg`` (0 when null), framed like the middle
    camera (``camera.framing()``; threestudio's default_camera_distance / default_fovy_deg)."""
    elevation = cfg.image.elevation_deg if cfg.image.elevation_deg is not None else 0.0
    azimuth = cfg.image.azimuth_deg if cfg.image.azimuth_deg is not None else 0.0
    distance, fovy = cfg.camera.framing()
    return cameras_from_spherical(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)]),
                                  torch.tensor([float(distance)]), torch.tensor([float(fovy)]))


@dataclass
class TextPrior:
    """Magic123's 2D prior: a text teacher, its view-dependent prompts and its SDS (``text_prior``)."""

    teacher: Teacher
    prompts: PromptProcessor
    guidance: Guidance


def build_text_prior(cfg: RunConfig, device: torch.device) -> TextPrior | None:
    """The text prior of ``text_prior`` (None when its weight is 0 throughout): ``text_prior.teacher`` with its
    default settings (``model`` for Stable Diffusion), the run's prompt and SDS with the prior's scale and t range."""
    prior = cfg.text_prior
    if prior.weight == 0 or prior.weight == 0.0:
        return None
    teacher_cfg = TEACHER_CONFIGS[prior.teacher]()
    if prior.model is not None and hasattr(teacher_cfg, "model"):
        teacher_cfg = dataclasses.replace(teacher_cfg, model=prior.model)
    teacher = TEACHERS[prior.teacher].from_config(teacher_cfg, teacher_context(cfg, device))
    guidance_cfg = GUIDANCE_CONFIGS["sds"](guidance_scale=prior.guidance_scale, min_step_percent=prior.min_step_percent,
                                           max_step_percent=prior.max_step_percent)
    return TextPrior(teacher, PromptProcessor(teacher, cfg.prompt, PromptConfig()),
                     GUIDANCES["sds"](guidance_cfg, teacher, cfg.trainer.max_steps))


def build_reference(cfg: RunConfig, device: torch.device) -> ReferenceView | None:
    """The run's reference view (``image.path``), or None for a text-only run. Bad images raise ImageFileError."""
    image_cfg = cfg.image
    depth_weights = [image_cfg.lambda_depth, image_cfg.lambda_depth_rel]
    if not image_cfg.path:
        if image_cfg.depth_path:
            raise ConfigError("image.depth_path is the depth map of a reference image: give the image too "
                              "(dreamengine generate --image REF.png)")
        return None
    if image_cfg.depth_path is None and any(schedule_max(weight) > 0 for weight in depth_weights):
        raise ConfigError("image.lambda_depth / image.lambda_depth_rel weigh the reference view's depth against its "
                          "depth map: give one with image.depth_path=DEPTH.png (or .npy), or set them to 0")
    image = load_reference_image(image_cfg.path, cfg.camera.height, cfg.camera.width,
                                 tuple(cfg.render.background_color), image_cfg.mask, image_cfg.background_tolerance,
                                 image_cfg.recenter, image_cfg.fill, depth_path=image_cfg.depth_path)
    moved = dataclasses.replace(image, rgb=image.rgb.to(device), mask=image.mask.to(device),
                                foreground=image.foreground.to(device),
                                depth=image.depth.to(device) if image.depth is not None else None)
    return ReferenceView(moved, reference_camera(cfg).to(device))


def build_prompts(cfg: RunConfig, teacher: Teacher) -> PromptProcessor:
    return PromptProcessor(teacher, cfg.prompt, cfg.prompt_processor)


# --------------------------------------------------------------------------------------------------- scenes
def build_scene(scene_cfg: Any) -> Scene:
    """A fresh scene of ``scene.name``. A Gaussian scene with ``init: nerf`` starts from the NeRF run in
    ``scene.init_path`` (:func:`gaussians_from_nerf_run`); every other initialization is the scene's own."""
    if scene_cfg.name == "gaussians" and scene_cfg.init == "nerf":
        sh_degree = 0 if scene_cfg.albedo_only else int(scene_cfg.sh_degree)
        return GaussianScene(scene_cfg, initial=gaussians_from_nerf_run(scene_cfg, sh_degree))
    return SCENES[scene_cfg.name](scene_cfg)


def build_background(cfg: RunConfig) -> Background:
    """The background of the render settings (``solid`` color or a small ``mlp`` on view directions)."""
    return Background(mode=cfg.render.background, color=tuple(cfg.render.background_color))


def build_scenes(cfg: RunConfig, device: torch.device) -> tuple[list[Scene], Background, list[Renderer]]:
    """``trainer.n_particles`` fresh scenes of ``cfg.scene`` (particle i seeded ``scene.seed + i`` where the scene
    has a seed), one background, and one renderer per scene, all on ``device``."""
    scenes, renderers = [], []
    render_cfg = cfg.render
    if schedule_max(cfg.loss.lambda_normal_smooth) > 0:  # it reads the rendered normals, whatever the shading
        if cfg.scene.name in SCENES_WITHOUT_NORMALS:
            raise ConfigError(f"loss.lambda_normal_smooth smooths rendered normal maps, which scene.name="
                              f"{cfg.scene.name} does not render; use a nerf or mesh scene, or set it to 0")
        render_cfg = dataclasses.replace(render_cfg, compute_normals=True)
    for particle in range(cfg.trainer.n_particles):
        scene_cfg = cfg.scene
        if particle and hasattr(scene_cfg, "seed"):
            scene_cfg = dataclasses.replace(scene_cfg, seed=scene_cfg.seed + particle)
        scene = build_scene(scene_cfg).to(device)
        scenes.append(scene)
        renderers.append(RENDERERS[cfg.scene.name](render_cfg, scene.radius, device))
    return scenes, build_background(cfg).to(device), renderers


def build_densifiers(cfg: RunConfig, scenes: list[Scene]) -> list[DensifyStrategy | None]:
    """One densification strategy per scene whose type is densified (Gaussians), else None."""
    return [DensifyStrategy(cfg.densify) if cfg.scene.name in DENSIFIED_SCENES else None for _ in scenes]


def build_guidance(cfg: RunConfig, teacher: Teacher) -> Guidance:
    return GUIDANCES[cfg.guidance.name](cfg.guidance, teacher, cfg.trainer.max_steps)


def build_optimizer(cfg: RunConfig, scenes: list[Scene], background: Background) -> torch.optim.Optimizer:
    """Adam over every scene's parameter groups (the background's with the first scene's)."""
    groups = [group for index, scene in enumerate(scenes)
              for group in scene.param_groups(cfg.optim, background if index == 0 else None)]
    if cfg.optim.name == "adamw":  # decoupled weight decay (ProlificDreamer, ScaleDreamer)
        return torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                 weight_decay=cfg.optim.weight_decay)
    return torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)


# --------------------------------------------------------------------------------------- finished runs' scenes
def load_scenes(cfg: RunConfig, path: Path, device: torch.device | str = "cpu"
                ) -> tuple[list[Scene], Background, list[Renderer]]:
    """The scenes, background and renderers of a run's checkpoint at ``path``, ready to render (eval mode)."""
    state = load_checkpoint(path, map_location=device)
    scenes, background, renderers = build_scenes(cfg, torch.device(device))
    restore_scenes(state, path, scenes, background, renderers)
    return [scene.eval() for scene in scenes], background.eval(), renderers


def load_run(path: str | Path, device: torch.device | str = "cpu"
             ) -> tuple[Path, RunConfig, list[Scene], Background, list[Renderer]]:
    """(run_dir, cfg, scenes, background, renderers) of a run directory's last checkpoint; for a system run, of
    its last stage that has one (:func:`dreamengine.runs.trained_run_dir`)."""
    run_dir, cfg = open_run_dir(trained_run_dir(path))
    scenes, background, renderers = load_scenes(cfg, run_dir / "ckpt" / "last.pt", device)
    ready_for_final_renders(scenes, renderers)
    return run_dir, cfg, scenes, background, renderers


def ready_for_final_renders(scenes: list[Scene], renderers: list[Renderer]) -> None:
    """Ready each renderer for the renders after training (export, evaluation, report; see
    :meth:`~dreamengine.core.protocols.Renderer.after_training`). The state it changes is not training state:
    call it after the last checkpoint is written, so that a run continued later trains as it would have."""
    for scene, renderer in zip(scenes, renderers, strict=True):
        renderer.after_training(scene.render_inputs())


def gaussians_from_nerf_run(scene_cfg: Any, sh_degree: int, resolution: int = 64) -> dict[str, Tensor]:
    """Gaussian parameters (:func:`~dreamengine.scenes.gaussian_init.gaussians_at`) at random points where the
    finished NeRF run in ``scene_cfg.init_path`` has density above its export surface level, with its albedo."""
    from dreamengine.export.scene_export import export_cameras, surface_level

    if not scene_cfg.init_path:
        raise ConfigError("scene.init=nerf needs scene.init_path: the run directory of a finished NeRF run")
    run_dir, run_cfg = open_run_dir(scene_cfg.init_path)
    if run_cfg.scene.name != "nerf":
        raise ConfigError(f"scene.init_path {run_dir} is a '{run_cfg.scene.name}' run; scene.init=nerf needs a "
                          "NeRF run (scene.name=nerf)")
    scenes, background, renderers = load_scenes(run_cfg, Path(run_dir) / "ckpt" / "last.pt")
    ready_for_final_renders(scenes, renderers)
    nerf = scenes[0]
    cameras = export_cameras(*run_cfg.camera.framing())

    def render_opacity(cams: Any, size: int) -> Tensor:
        return render_fixed(renderers[0], nerf.render_inputs(), background, cams, size, size).opacity[..., 0]

    level = surface_level(nerf, run_cfg.export.threshold, render_opacity, cameras, run_cfg.export.level_fit_resolution)
    axis = torch.linspace(-nerf.radius, nerf.radius, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.no_grad():
        density = torch.cat([nerf.density(part) for part in grid.split(65536)])
    cells = grid[density > level]
    if len(cells) == 0:
        raise DreamEngineError(f"the NeRF run {run_dir} has no density above its surface level {level:.3g}; "
                               "train it longer or start from scene.init=sphere")
    generator = torch.Generator().manual_seed(scene_cfg.seed)
    picks = torch.randint(len(cells), (scene_cfg.num_points,), generator=generator)
    cell_size = 2.0 * nerf.radius / (resolution - 1)
    points = cells[picks] + (torch.rand(scene_cfg.num_points, 3, generator=generator) - 0.5) * cell_size
    with torch.no_grad():
        colors = nerf.albedo(points)
    return gaussians_at(points, colors, scene_cfg, sh_degree)


__all__ = ["DENSIFIED_SCENES", "GUIDANCES_THAT_ADAPT_THE_TEACHER", "ReferenceView", "TextPrior", "build_background",
           "build_densifiers", "build_guidance", "build_optimizer", "build_prompts", "build_reference", "build_scene",
           "build_scenes", "build_teacher", "build_text_prior", "gaussians_from_nerf_run", "load_run", "load_scenes",
           "ready_for_final_renders", "reference_camera", "resolve_device", "teacher_context"]
