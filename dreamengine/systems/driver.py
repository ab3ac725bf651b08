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
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from dreamengine.config import RunConfig, config_to_yaml
from dreamengine.core.files import atomic_write, write_json
from dreamengine.errors import ConfigError
from dreamengine.pipeline import StageResult, run_stage
from dreamengine.report import write_report
from dreamengine.runs import SYSTEM_FILE, read_system_run
from dreamengine.systems import SystemSpec, split_stage_overrides, stage_config
from dreamengine.trainer import StepEvent, Trainer

DONE_FILE = "done.json"


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
        atomic_write(folder / "config.yaml", config_to_yaml(cfg))
        description["stages"].append({"name": stage.name, "dir": str(folder.relative_to(run_dir)),
                                      "init": stage.init, "scene": cfg.scene.name, "guidance": cfg.guidance.name,
                                      "steps": cfg.trainer.max_steps})
    atomic_write(run_dir / SYSTEM_FILE, OmegaConf.to_yaml(OmegaConf.create(description)))


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
        trainer = first_trainer if first_trainer is not None else Trainer.from_run_dir(folder, stage["name"])
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
    try:
        write_report(run_dir)  # the system's page: the last stage's outputs, links to every stage's report
    except Exception as error:  # noqa: BLE001 (a report failure must not lose the run)
        print(f"warning: the run report was not written ({type(error).__name__}: {error}); retry with: "
              f"dreamengine report {run_dir}", flush=True)


__all__ = ["DONE_FILE", "init_from_previous", "plan_stages", "publish_final", "run_system", "stage_dir",
           "write_system_run"]
