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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamengine.config import RunConfig, load_config
from dreamengine.errors import DreamEngineError
from dreamengine.pipeline import run_stage
from dreamengine.runs import init_run_dir, is_system_run, plan_run_dir
from dreamengine.scenes.mesh import read_mesh_file
from dreamengine.systems import load_system
from dreamengine.systems.driver import plan_stages, run_system, stage_dir, write_system_run
from dreamengine.trainer import StepEvent, Trainer

Callback = Callable[[StepEvent], None]


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


def prepare(prompt: str, *, config: str | Path | None = None, system: str | None = None,
            overrides: Sequence[str] = (), output_dir: str | Path | None = None, export: bool = True,
            argv: Sequence[str] | None = None, run_dir: str | Path | None = None) -> Run:
    """Validate the settings, build the first stage's trainer (teacher, scene, ...), then create the run
    directory with its resolved config(s) and manifest. Nothing is written when anything is wrong.

    The run directory is ``output_dir/<prompt slug>-<time>`` unless ``run_dir`` names it (it must not exist)."""
    overrides = _checked_overrides(prompt, overrides, output_dir)
    command = list(argv if argv is not None else sys.argv)
    if system is None:
        cfg = load_config(config if config is not None else "quickstart", overrides, prompt=prompt)
        return _start_single(cfg, run_dir, command, export)
    if config is not None:
        raise DreamEngineError("pass either a config or a system, not both: a system names its stages' configs "
                               "(override their keys with key=value, or STAGE:key=value for one stage)")
    spec = load_system(system)
    first = load_config(spec.stages[0].config, [*spec.stages[0].overrides], prompt=prompt)  # only for output_dir
    run_dir = Path(run_dir) if run_dir is not None else plan_run_dir(_with_output_dir(first, overrides))
    configs = plan_stages(spec, prompt, overrides, run_dir)
    trainer = Trainer(configs[0], stage_dir(run_dir, 0, spec.stages[0].name), stage=spec.stages[0].name)
    init_run_dir(run_dir, configs[0], command, _teacher_info(trainer), write_config=False)
    write_system_run(run_dir, spec, prompt, configs)
    return Run(run_dir, trainer, system=True, export=export)


def generate(prompt: str, *, config: str | Path | None = None, system: str | None = None,
             overrides: Sequence[str] = (), callbacks: Sequence[Callback] = (),
             output_dir: str | Path | None = None) -> Asset:
    """Text prompt -> trained scene -> exported asset (see the module docstring)."""
    return prepare(prompt, config=config, system=system, overrides=overrides, output_dir=output_dir).execute(callbacks)


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
        raise DreamEngineError('the prompt is empty: give a text prompt, e.g. dreamengine generate "a red cube"')
    return [*overrides, *([f"output_dir='{output_dir}'"] if output_dir is not None else [])]


def _start_single(cfg: RunConfig, run_dir: str | Path | None, command: list[str], export: bool = True,
                  input_file: Path | None = None) -> Run:
    """Build the trainer (everything is validated before the disk is touched), then create the run directory with
    its config and manifest. With ``input_file`` (refine), the file is copied to ``RUN_DIR/input/`` and the
    recorded config's ``scene.init_path`` points at the copy."""
    run_dir = Path(run_dir) if run_dir is not None else plan_run_dir(cfg)
    trainer = Trainer(cfg, run_dir)
    extra = None
    if input_file is not None:
        copy = run_dir / "input" / input_file.name
        trainer.cfg = dataclasses.replace(cfg, scene=dataclasses.replace(cfg.scene, init_path=str(copy)))
        extra = {"input": str(input_file)}
    init_run_dir(run_dir, trainer.cfg, command, _teacher_info(trainer), extra=extra)
    if input_file is not None:
        (run_dir / "input").mkdir()
        shutil.copy2(input_file, run_dir / "input" / input_file.name)
    return Run(run_dir, trainer, system=False, export=export)


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


__all__ = ["Asset", "Callback", "Run", "generate", "open_run", "prepare", "prepare_refine", "refine", "resume"]
