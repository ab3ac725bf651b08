"""The library API: what ``dreamengine generate`` / ``resume`` do, callable from Python.

    import dreamengine

    asset = dreamengine.generate("a red cube", config="quickstart", overrides=["trainer.max_steps=300"],
                                 callbacks=[lambda event: print(event.step, event.terms["loss"])])
    print(asset.glb, asset.metrics["mask_iou"])
    refined = dreamengine.refine("my_mesh.glb", "a red cube")     # texture an existing mesh

``generate`` runs either one config (``config=``, default ``quickstart``) or a named system of stages
(``system=``, see ``dreamengine systems``). Callbacks receive a :class:`~dreamengine.trainer.StepEvent` after
every step (stage name, step, losses, the preview image when one was written). For a command-line tool or a
GUI that wants to show the run directory before training starts, :func:`prepare` builds and validates
everything and creates the run directory; :meth:`Run.execute` trains.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamengine.build import build_reference, teacher_context
from dreamengine.config import RunConfig, load_config
from dreamengine.errors import ConfigError, DreamEngineError
from dreamengine.images import read_image
from dreamengine.pipeline import run_stage
from dreamengine.runs import init_run_dir, is_system_run, plan_run_dir
from dreamengine.scenes.mesh import read_mesh_file
from dreamengine.systems import load_system, split_stage_overrides, stage_config
from dreamengine.systems.driver import plan_stages, run_system, stage_dir, write_system_run
from dreamengine.teachers.toy_image import ToyImageTeacher, ToyMatch
from dreamengine.trainer import StepEvent, Trainer

Callback = Callable[[StepEvent], None]

TOY_IMAGE_SYSTEM = "zero123-toy"  # --image with no --system/--config: a toy-world render goes here
DEFAULT_IMAGE_SYSTEM = "stable-zero123"  # ... and any other image here
TOY_MATCH_RMS = 0.15  # an image whose nearest toy bank view differs by less (RMS, [0, 1] units) is a toy render


@dataclass
class Asset:
    """What a finished run produced."""

    run_dir: Path
    files: list[Path] = field(default_factory=list)  # every file written under run_dir/final
    metrics: dict[str, Any] | None = None  # run_dir/metrics.json: evaluation (toy-world runs), training summary

    @property
    def glb(self) -> Path | None:
        """The textured/colored mesh, ``final/model.glb``, when the run exported one."""
        path = self.run_dir / "final" / "model.glb"
        return path if path.is_file() else None

    @property
    def splat(self) -> Path | None:
        """The Gaussians as a standard 3DGS PLY, ``final/scene.ply``, for Gaussian runs."""
        path = self.run_dir / "final" / "scene.ply"
        return path if path.is_file() else None


@dataclass
class Run:
    """A validated run whose directory exists: call :meth:`execute` to train, export and evaluate it."""

    run_dir: Path
    trainer: Trainer | None = None  # the first (or only) stage's trainer, already built
    system: bool = False
    export: bool = True
    on_stage: Callable[[str, int, int, Trainer], None] | None = None  # called before each system stage

    def execute(self, callbacks: Sequence[Callback] = ()) -> Asset:
        """Train (resuming where a checkpoint exists), export and evaluate; returns the :class:`Asset`."""
        if self.system:
            run_system(self.run_dir, callbacks, first_trainer=self.trainer, on_stage=self.on_stage)
            files = sorted(p for p in (self.run_dir / "final").rglob("*") if p.is_file())
            return Asset(self.run_dir, files, _read_metrics(self.run_dir))
        trainer = self.trainer if self.trainer is not None else Trainer.from_run_dir(self.run_dir)
        result = run_stage(trainer, callbacks, export=self.export)
        return Asset(self.run_dir, result.files, result.metrics)


def prepare(prompt: str = "", *, image: str | Path | None = None, config: str | Path | None = None,
            system: str | None = None, overrides: Sequence[str] = (), output_dir: str | Path | None = None,
            export: bool = True, argv: Sequence[str] | None = None, run_dir: str | Path | None = None) -> Run:
    """Validate the settings, build the first stage's trainer (teacher, scene, ...), then create the run
    directory with its resolved config(s) and manifest. Nothing is written when anything is wrong.

    With ``image`` (image-to-3D), the image is checked first and never modified: a copy goes into
    ``RUN_DIR/input/`` and the run's ``image.path`` points at it (:func:`image_run_settings` picks the system and,
    for the toy teacher, the object and view the image shows; the prompt is then optional).
    The run directory is ``output_dir/<prompt slug>-<time>`` unless ``run_dir`` names it (it must not exist)."""
    input_file = None
    if image is None and system is not None and _first_config(config, system, list(overrides), prompt).image.sample:
        image = sample_visual_prompt(_first_config(config, system, list(overrides), prompt))  # VP3D
    if image is not None:
        input_file = Path(image).expanduser()
        prompt, config, system, overrides = image_run_settings(prompt, input_file, config, system, overrides)
    overrides = _checked_overrides(prompt, overrides, output_dir)
    command = list(argv if argv is not None else sys.argv)
    if system is None:
        cfg = load_config(config if config is not None else "quickstart", overrides, prompt=prompt)
        return _start_single(cfg, run_dir, command, export, input_file=input_file, input_key="image")
    if config is not None:
        raise DreamEngineError("pass either a config or a system, not both: a system names its stages' configs "
                               "(override their keys with key=value, or STAGE:key=value for one stage)")
    spec = load_system(system)
    first = load_config(spec.stages[0].config, [*spec.stages[0].overrides], prompt=prompt)  # only for output_dir
    run_dir = Path(run_dir) if run_dir is not None else plan_run_dir(_with_output_dir(first, overrides))
    configs = plan_stages(spec, prompt, overrides, run_dir)
    trainer = Trainer(configs[0], stage_dir(run_dir, 0, spec.stages[0].name), stage=spec.stages[0].name)
    extra = None
    depth_file = _depth_file(configs)
    if input_file is not None:  # every stage's recorded config reads the run's own copy of the image
        copy = run_dir.resolve() / "input" / input_file.name  # absolute: stages and resumes read it from anywhere
        configs = [_with_input(cfg, "image", copy) if cfg.image.path else cfg for cfg in configs]
        if depth_file is not None:
            depth_copy = run_dir.resolve() / "input" / depth_copy_name(depth_file)
            configs = [_with_depth(cfg, depth_copy) if cfg.image.depth_path else cfg for cfg in configs]
        trainer.cfg = configs[0]
        extra = _input_record(input_file, depth_file)
    init_run_dir(run_dir, configs[0], command, _teacher_info(trainer), write_config=False, extra=extra)
    write_system_run(run_dir, spec, prompt, configs)
    if input_file is not None:
        _copy_inputs(run_dir, input_file, depth_file)
    return Run(run_dir, trainer, system=True, export=export)


def generate(prompt: str = "", *, image: str | Path | None = None, config: str | Path | None = None,
             system: str | None = None, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = (),
             output_dir: str | Path | None = None) -> Asset:
    """Text prompt (or reference image, ``image=``, with an optional prompt) -> trained scene -> exported asset
    (see the module docstring)."""
    return prepare(prompt, image=image, config=config, system=system, overrides=overrides,
                   output_dir=output_dir).execute(callbacks)


def image_run_settings(prompt: str, image: Path, config: str | Path | None, system: str | None,
                       overrides: Sequence[str]) -> tuple[str, str | Path | None, str | None, list[str]]:
    """(prompt, config, system, overrides) of an image-to-3D run.

    The image is read first (missing, corrupt, too small: :class:`~dreamengine.errors.ImageFileError`). With neither
    a system nor a config, a toy-world render goes to :data:`TOY_IMAGE_SYSTEM` and any other image to
    :data:`DEFAULT_IMAGE_SYSTEM`. When the run's teacher is the toy image teacher, the object and view it
    recognizes become ``image.object`` (what ``dreamengine eval`` measures against) and the reference camera
    (``image.elevation_deg`` / ``azimuth_deg``, unless given); the prompt defaults to the object's name. Other
    image runs without a prompt are named after the file."""
    read_image(image)
    overrides = [*overrides, f"image.path='{image}'"]
    match = None
    if system is None and config is None:
        match = _toy_match(_first_config(None, TOY_IMAGE_SYSTEM, overrides, prompt))
        system = TOY_IMAGE_SYSTEM if match.rms <= TOY_MATCH_RMS else DEFAULT_IMAGE_SYSTEM
    first = _first_config(config, system, overrides, prompt)
    if first.teacher.name != "toyworld-image":
        return prompt.strip() or f"the object in {image.name}", config, system, overrides
    match = match or _toy_match(first)
    if match.rms > TOY_MATCH_RMS:
        warnings.warn(f"{image} does not look like a toy-world render (its nearest toy view differs by RMS "
                      f"{match.rms:.3f} > {TOY_MATCH_RMS}); the toy teacher treats it as {match.object}", stacklevel=2)
    given = {item.partition("=")[0].strip() for item in overrides}
    found = {"image.object": f"'{match.object}'", "image.elevation_deg": f"{match.elevation:g}",
             "image.azimuth_deg": f"{match.azimuth:g}"}
    overrides += [f"{key}={value}" for key, value in found.items() if key not in given]
    return prompt.strip() or match.object, config, system, overrides


def sample_visual_prompt(cfg: RunConfig) -> Path:
    """VP3D's visual prompt: an image sampled for ``cfg.prompt`` (with the view phrase ``image.sample_view``) from the
    text prior's teacher (``text_prior.teacher``, framed like the run), by the DDIM / ancestral loop with the run's
    seed; written as ``visual-prompt.png`` in a temporary folder (the run keeps a copy in ``RUN_DIR/input/``)."""
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from dreamengine.config import TEACHER_CONFIGS
    from dreamengine.prompts import view_prompt
    from dreamengine.teachers import TEACHERS
    from dreamengine.teachers.sampling import ddim_sample

    if not cfg.prompt.strip():
        raise DreamEngineError("a sampled visual prompt (image.sample=true) needs a text prompt")
    device = torch.device("cpu")
    name = cfg.text_prior.teacher
    teacher_cfg = TEACHER_CONFIGS[name]()
    if cfg.text_prior.model is not None and hasattr(teacher_cfg, "model"):
        teacher_cfg = dataclasses.replace(teacher_cfg, model=cfg.text_prior.model)
    teacher = TEACHERS[name].from_config(teacher_cfg, teacher_context(cfg, device))
    text = view_prompt(cfg.prompt, cfg.image.sample_view)
    cond, uncond = teacher.embed([text]), teacher.embed([""])
    probe = teacher.encode(torch.zeros(1, 3, 8, 8))
    generator = torch.Generator().manual_seed(cfg.seed)
    z = ddim_sample(teacher, cond, uncond, tuple(probe.shape), num_steps=cfg.image.sample_steps,
                    guidance_scale=cfg.text_prior.guidance_scale if name != "toyworld" else 1.0, generator=generator)
    rgb = teacher.decode(z)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    path = Path(tempfile.mkdtemp(prefix="dreamengine-vp3d-")) / "visual-prompt.png"
    Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8), "RGB").save(path)
    return path


def _first_config(config: str | Path | None, system: str | None, overrides: list[str], prompt: str) -> RunConfig:
    """The config of the run (or of the system's first stage) with ``overrides``, before any image detection."""
    text = prompt.strip() or "image"
    if system is None:
        return load_config(config if config is not None else "quickstart", overrides, prompt=text)
    spec = load_system(system)
    return stage_config(spec, 0, text, split_stage_overrides(spec, overrides)[spec.stages[0].name])


def _toy_match(cfg: RunConfig) -> ToyMatch:
    """The toy object and view the run's reference image shows, as the toy image teacher of ``cfg`` sees it."""
    import torch

    from dreamengine.config import TEACHER_CONFIGS

    device = torch.device("cpu")
    teacher_cfg = cfg.teacher if cfg.teacher.name == "toyworld-image" else TEACHER_CONFIGS["toyworld-image"]()
    teacher = ToyImageTeacher.from_config(teacher_cfg, teacher_context(cfg, device))
    reference = build_reference(cfg, device)
    return teacher.identify(reference.image.rgb.permute(2, 0, 1))


def prepare_refine(mesh: str | Path, prompt: str, *, config: str | Path = "refine-toy", overrides: Sequence[str] = (),
                   output_dir: str | Path | None = None, argv: Sequence[str] | None = None,
                   run_dir: str | Path | None = None) -> Run:
    """Like :func:`prepare` for ``dreamengine refine``: a mesh scene started from the user's mesh file.

    The file is checked first (missing, not a mesh, empty, NaN vertices: :class:`~dreamengine.errors.MeshFileError`)
    and never modified; a copy goes into ``RUN_DIR/input/`` and the run's config points at the copy, so resuming
    never depends on the original."""
    source = Path(mesh).expanduser()
    read_mesh_file(source)
    overrides = [*_checked_overrides(prompt, overrides, output_dir), "scene.name=mesh", f"scene.init_path='{source}'"]
    cfg = load_config(config, overrides, prompt=prompt)
    return _start_single(cfg, run_dir, list(argv if argv is not None else sys.argv), input_file=source)


def refine(mesh: str | Path, prompt: str, *, config: str | Path = "refine-toy", overrides: Sequence[str] = (),
           callbacks: Sequence[Callback] = (), output_dir: str | Path | None = None) -> Asset:
    """An existing mesh file -> its texture (and, with ``scene.optimize_vertices=true``, its shape) optimized for
    ``prompt`` -> exported asset. ``config`` names the settings (``refine-toy`` offline, ``refine-sd`` on a GPU)."""
    return prepare_refine(mesh, prompt, config=config, overrides=overrides, output_dir=output_dir).execute(callbacks)


def open_run(run_dir: str | Path) -> Run:
    """A stopped or killed run directory, ready to :meth:`Run.execute` from its last checkpoint."""
    path = Path(run_dir)
    if is_system_run(path):
        return Run(path, None, system=True)
    return Run(path, Trainer.from_run_dir(path), system=False)


def resume(run_dir: str | Path, callbacks: Sequence[Callback] = ()) -> Asset:
    """Continue a stopped or killed run (single config or system) from its checkpoints."""
    return open_run(run_dir).execute(callbacks)


def _checked_overrides(prompt: str, overrides: Sequence[str], output_dir: str | Path | None) -> list[str]:
    if not prompt.strip():
        raise DreamEngineError('the prompt is empty: give a text prompt, e.g. dreamengine generate "a red cube", '
                               "or a reference image: dreamengine generate --image REF.png")
    return [*overrides, *([f"output_dir='{output_dir}'"] if output_dir is not None else [])]


def _start_single(cfg: RunConfig, run_dir: str | Path | None, command: list[str], export: bool = True,
                  input_file: Path | None = None, input_key: str = "scene") -> Run:
    """Build the trainer (everything is validated before the disk is touched), then create the run directory with
    its config and manifest. With ``input_file`` (refine's mesh, generate's reference image), the file is copied
    to ``RUN_DIR/input/`` and the recorded config (``scene.init_path`` or ``image.path``) points at the copy."""
    run_dir = Path(run_dir) if run_dir is not None else plan_run_dir(cfg)
    trainer = Trainer(cfg, run_dir)
    extra = None
    depth_file = _depth_file([cfg]) if input_key == "image" else None
    if input_file is not None:
        folder = run_dir.resolve() if input_key == "image" else run_dir  # refine records the path as given
        trainer.cfg = _with_input(cfg, input_key, folder / "input" / input_file.name)
        if depth_file is not None:
            trainer.cfg = _with_depth(trainer.cfg, folder / "input" / depth_copy_name(depth_file))
        extra = _input_record(input_file, depth_file)
    init_run_dir(run_dir, trainer.cfg, command, _teacher_info(trainer), extra=extra)
    if input_file is not None:
        _copy_inputs(run_dir, input_file, depth_file)
    return Run(run_dir, trainer, system=False, export=export)


def _with_input(cfg: RunConfig, section: str, copy: Path) -> RunConfig:
    """``cfg`` reading its input file from ``copy``: ``scene.init_path`` (refine) or ``image.path`` (image-to-3D)."""
    if section == "scene":
        return dataclasses.replace(cfg, scene=dataclasses.replace(cfg.scene, init_path=str(copy)))
    return dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, path=str(copy)))


def _with_depth(cfg: RunConfig, copy: Path) -> RunConfig:
    """``cfg`` reading the reference image's depth map (``image.depth_path``) from ``copy``."""
    return dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, depth_path=str(copy)))


def depth_copy_name(depth_file: Path) -> str:
    """The name of the depth map's copy in ``RUN_DIR/input/`` (prefixed: it never collides with the image's)."""
    return f"depth-{depth_file.name}"


def _depth_file(configs: Sequence[RunConfig]) -> Path | None:
    """The depth map of the reference image that the run's stages name (``image.depth_path``), None without one."""
    files = {Path(cfg.image.depth_path).expanduser() for cfg in configs if cfg.image.depth_path}
    if len(files) > 1:
        raise ConfigError("the stages of this run name different depth maps (image.depth_path): give one")
    return files.pop() if files else None


def _input_record(input_file: Path, depth_file: Path | None) -> dict[str, str]:
    """The manifest's record of the user's input files."""
    return {"input": str(input_file), **({"depth": str(depth_file)} if depth_file is not None else {})}


def _copy_inputs(run_dir: Path, input_file: Path, depth_file: Path | None = None) -> None:
    """The user's files, copied byte for byte (never modified) to ``RUN_DIR/input/``: the input under its own name,
    the depth map under :func:`depth_copy_name`."""
    (run_dir / "input").mkdir(exist_ok=True)
    shutil.copy2(input_file, run_dir / "input" / input_file.name)
    if depth_file is not None:
        shutil.copy2(depth_file, run_dir / "input" / depth_copy_name(depth_file))


def _with_output_dir(cfg: Any, overrides: list[str]) -> Any:
    """``cfg`` with the output_dir the overrides ask for (systems pick their run directory before stages load)."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "output_dir":
            return dataclasses.replace(cfg, output_dir=value.strip().strip("'\""))
    return cfg


def _teacher_info(trainer: Trainer) -> dict[str, Any] | None:
    describe = getattr(trainer.teacher, "describe", None)
    return describe() if describe is not None else None


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = ["DEFAULT_IMAGE_SYSTEM", "TOY_IMAGE_SYSTEM", "Asset", "Callback", "Run", "generate", "image_run_settings",
           "open_run", "prepare", "prepare_refine", "refine", "resume", "sample_visual_prompt"]
