"""Runs a system's stages in one run directory, resumably.

Layout of a system run::

    runs/<slug>-<time>/
      system.yaml            the system's name, description, paper, prompt and stage list (as started)
      manifest.json          versions, seed, command, config hashes
      stages/01-<name>/      one ordinary run directory per stage (config.yaml, ckpt/, previews/, final/, ...)
      stages/01-<name>/done.json   written when the stage has trained, exported and evaluated
      final/                 the last stage's outputs, copied
      metrics.json           the last stage's evaluation, with a per-stage summary

Every stage's config is resolved and written when the run starts, so a resumed run uses exactly the settings
it started with. :func:`run_system` skips finished stages (never recomputed), resumes a started one from its
checkpoint and starts the rest.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dreamengine.config import RunConfig, config_to_yaml, load_config
from dreamengine.errors import CheckpointError, ConfigError
from dreamengine.runs import write_json
from dreamengine.systems import SystemSpec, split_stage_overrides, stage_config
from dreamengine.trainer import StepEvent, Trainer

DONE_FILE = "done.json"


@dataclass
class StageResult:
    """What one finished stage produced."""

    name: str
    run_dir: Path
    files: list[Path]  # what export wrote under final/
    metrics: dict[str, Any]  # metrics.json: the evaluation (toy-world runs) and a training summary
    seconds: float  # wall time of the training, export and eval that finished the stage


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index + 1:02d}-{name}"


def init_from_previous(previous: RunConfig, previous_dir: Path, scene_name: str, stage: str) -> list[str]:
    """Overrides that make a stage's scene (``scene_name``) start from the previous stage's run directory."""
    if scene_name == "mesh":  # the previous stage's exported GLB, already in the scene frame: no normalization
        return [f"scene.init_path='{previous_dir / 'final' / 'model.glb'}'", "scene.normalize=false"]
    if scene_name == "gaussians":
        if previous.scene.name == "nerf":
            return ["scene.init=nerf", f"scene.init_path='{previous_dir}'"]
        if previous.scene.name == "gaussians":
            return ["scene.init=ply", f"scene.init_path='{previous_dir / 'final' / 'scene.ply'}'"]
    raise ConfigError(f"stage '{stage}' ({scene_name} scene) cannot start from a previous {previous.scene.name} "
                      "stage; set its init to fresh or change its scene")


def plan_stages(spec: SystemSpec, prompt: str, overrides: list[str], run_dir: Path) -> list[RunConfig]:
    """Every stage's full config (validated, with the previous-stage inits resolved), in order."""
    per_stage = split_stage_overrides(spec, overrides)
    configs: list[RunConfig] = []
    for index, stage in enumerate(spec.stages):
        cfg = stage_config(spec, index, prompt, per_stage[stage.name])
        if stage.init == "previous":
            init = init_from_previous(configs[-1], stage_dir(run_dir, index - 1, spec.stages[index - 1].name),
                                      cfg.scene.name, stage.name)
            cfg = stage_config(spec, index, prompt, per_stage[stage.name], init)
        configs.append(cfg)
    return configs


def write_system_run(run_dir: Path, spec: SystemSpec, prompt: str, configs: list[RunConfig]) -> None:
    """Create the stage folders with their resolved configs, and system.yaml (``run_dir`` must exist)."""
    description = {"system": spec.name, "description": spec.description, "paper": spec.paper, "prompt": prompt,
                   "source": spec.source, "stages": []}
    for index, (stage, cfg) in enumerate(zip(spec.stages, configs, strict=True)):
        folder = stage_dir(run_dir, index, stage.name)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(config_to_yaml(cfg))
        description["stages"].append({"name": stage.name, "dir": str(folder.relative_to(run_dir)),
                                      "init": stage.init, "scene": cfg.scene.name, "guidance": cfg.guidance.name,
                                      "steps": cfg.trainer.max_steps})
    (run_dir / "system.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(description)))


def read_system_run(run_dir: Path) -> dict[str, Any]:
    """system.yaml of a system run directory, as a plain dict."""
    path = run_dir / "system.yaml"
    try:
        return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]
    except Exception as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); it is not a DreamEngine system "
                              "run directory, or the file was damaged") from None


def is_system_run(run_dir: Path) -> bool:
    return (run_dir / "system.yaml").is_file()


def run_stage(trainer: Trainer, callbacks: Sequence[Callable[[StepEvent], None]] = (),
              export: bool = True) -> StageResult:
    """Train (from wherever the trainer stands), export every particle, evaluate toy-world runs."""
    from dreamengine.results import evaluate_run, export_run

    start = time.perf_counter()
    cfg, run_dir = trainer.cfg, trainer.run_dir
    trainer.fit(callbacks)
    files = export_run(trainer.scenes, trainer.background, trainer.renderers, cfg, run_dir) if export else []
    metrics = evaluate_run(trainer.scene, trainer.background, trainer.renderer, cfg, run_dir)
    seconds = time.perf_counter() - start
    metrics["training"] = {"steps": trainer.step, "seconds_this_session": round(seconds, 2)}
    write_json(run_dir / "metrics.json", metrics)  # every finished run has one: batch skips runs that do
    from dreamengine.report import report_after_training

    report_after_training(trainer)  # turntable + report.html; a failure only warns (the results are saved)
    return StageResult(trainer.stage, run_dir, files, metrics, seconds)


def load_stage_trainer(folder: Path, name: str) -> Trainer:
    """A stage's trainer from its config.yaml, restored from its checkpoint when it has one."""
    cfg = load_config(folder / "config.yaml")
    trainer = Trainer(cfg, folder, stage=name)
    if (folder / "ckpt" / "last.pt").is_file():
        trainer.load()
    else:
        trainer.truncate_log()  # a stage killed before its first checkpoint starts over
    return trainer


def run_system(run_dir: Path, callbacks: Sequence[Callable[[StepEvent], None]] = (),
               first_trainer: Trainer | None = None,
               on_stage: Callable[[str, int, int, Trainer], None] | None = None) -> list[StageResult]:
    """Run every unfinished stage of a system run directory in order; returns all stages' results.

    ``first_trainer`` is an already built trainer for the first stage to run (the CLI builds it before creating
    the run directory, to report bad prompts early). ``on_stage(name, index, count, trainer)`` is called before
    each stage that runs."""
    system = read_system_run(run_dir)
    stages = system["stages"]
    results: list[StageResult] = []
    for index, stage in enumerate(stages):
        folder = run_dir / stage["dir"]
        done = folder / DONE_FILE
        if done.is_file():
            results.append(finished_stage(folder, stage["name"]))
            continue
        trainer = first_trainer if first_trainer is not None else load_stage_trainer(folder, stage["name"])
        first_trainer = None
        if on_stage is not None:
            on_stage(stage["name"], index, len(stages), trainer)
        result = run_stage(trainer, callbacks)
        write_json(done, {"stage": stage["name"], "seconds": result.seconds, "steps": trainer.step,
                          "files": [str(p.relative_to(folder)) for p in result.files]})
        results.append(result)
    publish_final(run_dir, results)
    return results


def finished_stage(folder: Path, name: str) -> StageResult:
    """The result of a stage that finished earlier (from its done.json and metrics.json)."""
    done = json.loads((folder / DONE_FILE).read_text())
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return StageResult(name, folder, [folder / f for f in done["files"]], metrics, float(done["seconds"]))


def publish_final(run_dir: Path, results: list[StageResult]) -> None:
    """Copy the last stage's final/ to the run's final/ and write the run's metrics.json with a stage summary."""
    last = results[-1]
    source = last.run_dir / "final"
    if source.is_dir():
        shutil.copytree(source, run_dir / "final", dirs_exist_ok=True)
    summary = [{"stage": r.name, "seconds": round(r.seconds, 2),
                **({"mask_iou": r.metrics["mask_iou"], "psnr": r.metrics["psnr"]} if "mask_iou" in r.metrics else {})}
               for r in results]
    write_json(run_dir / "metrics.json", {**last.metrics, "stages": summary})
    from dreamengine.report import write_report

    try:
        write_report(run_dir)  # the system's page: the last stage's outputs, links to every stage's report
    except Exception as error:  # noqa: BLE001 (a report failure must not lose the run)
        print(f"warning: the run report was not written ({type(error).__name__}: {error}); retry with: "
              f"dreamengine report {run_dir}", flush=True)


__all__ = ["DONE_FILE", "StageResult", "init_from_previous", "is_system_run", "load_stage_trainer", "plan_stages",
           "publish_final", "read_system_run", "run_stage", "run_system", "stage_dir", "write_system_run"]
