"""One run of one config, start to finish: train, export, evaluate, write the metrics and the report.

``dreamengine generate`` with a config runs :func:`run_stage` once; a system runs it once per stage
(:mod:`dreamengine.systems.driver`). It works from wherever the trainer stands (fresh or restored from a
checkpoint), so resuming is the same call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamengine.build import ready_for_final_renders
from dreamengine.core.files import write_json
from dreamengine.report import report_after_training
from dreamengine.results import evaluate_run, export_run
from dreamengine.trainer import StepEvent, Trainer


@dataclass
class StageResult:
    """What one finished run (or system stage) produced."""

    name: str  # the system stage's name ("" for a single-config run)
    run_dir: Path
    files: list[Path]  # what export wrote under final/
    metrics: dict[str, Any]  # metrics.json: the evaluation (toy-world runs) and a training summary
    seconds: float  # wall time of the training, export and eval that finished the run


def run_stage(trainer: Trainer, callbacks: Sequence[Callable[[StepEvent], None]] = (),
              export: bool = True) -> StageResult:
    """Train (from wherever the trainer stands), export every particle, evaluate, write metrics.json (every
    finished run has one: batch skips runs that do) and the report (its failure only warns)."""
    start = time.perf_counter()
    cfg, run_dir = trainer.cfg, trainer.run_dir
    trainer.fit(callbacks)  # ends with the last checkpoint
    ready_for_final_renders(trainer.scenes, trainer.renderers)  # e.g. a grid a 10-step run never refreshed
    files = export_run(trainer.scenes, trainer.background, trainer.renderers, cfg, run_dir) if export else []
    metrics = evaluate_run(trainer.scene, trainer.background, trainer.renderer, cfg, run_dir)
    seconds = time.perf_counter() - start
    metrics["training"] = {"steps": trainer.step, "seconds_this_session": round(seconds, 2)}
    if trainer.oom_shrinks:  # trainer.on_oom=shrink: the render sizes it lowered after out-of-memory errors
        metrics["training"]["oom_shrinks"] = trainer.oom_shrinks
    write_json(run_dir / "metrics.json", metrics)
    report = report_after_training(run_dir, cfg, trainer.render_views, trainer.device)
    turntable = run_dir / "final" / "turntable.mp4"
    files += [p for p in (turntable, report) if p is not None and p.is_file() and p not in files]
    return StageResult(trainer.stage, run_dir, files, metrics, seconds)


__all__ = ["StageResult", "run_stage"]
