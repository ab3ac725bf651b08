"""One generation in its own process: ``python -m dreamengine.ui.worker JOB.json``.

The web UI never trains in its own process: a crash, an out-of-memory kill or a Ctrl-C in a run ends only the
worker. The worker runs the library API (:func:`dreamengine.api.prepare` or :func:`dreamengine.api.open_run`)
with a step callback that writes ``RUN_DIR/ui/progress.json`` (atomically; the UI polls it) and ends by writing
the final state there: ``done``, ``stopped`` (SIGINT/SIGTERM: the trainer saved a checkpoint) or ``failed``.

JOB.json: ``{"action": "generate", "prompt": ..., "config": NAME | null, "system": NAME | null, "overrides": [...],
"run_dir": PATH}`` or ``{"action": "resume", "run_dir": PATH}``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from dreamengine.core.files import write_json

PROGRESS = Path("ui") / "progress.json"


def progress_path(run_dir: Path) -> Path:
    return run_dir / PROGRESS


class ProgressWriter:
    """A step callback (and system stage hook) that keeps ``RUN_DIR/ui/progress.json`` current.

    The ETA is the remaining steps of the current stage times the mean seconds per step since this session's
    first step event in that stage (steps restored from a checkpoint do not count); None until a second event."""

    def __init__(self, run_dir: Path, every_seconds: float = 0.5) -> None:
        self.run_dir = run_dir
        self.every = every_seconds
        self.state: dict[str, Any] = {"state": "starting", "stage": "", "stage_index": 0, "stage_count": 1,
                                      "step": 0, "max_steps": 0, "terms": {}, "eta_seconds": None, "preview": None,
                                      "log": "metrics.jsonl", "error": None, "started": time.time()}
        self._written = 0.0
        self._first: tuple[int, float] | None = None  # (step, time) of this stage's first event this session

    def on_stage(self, name: str, index: int, count: int, trainer: Any) -> None:
        log = (trainer.run_dir / "metrics.jsonl").relative_to(self.run_dir)
        self.state.update(stage=name, stage_index=index, stage_count=count, step=trainer.step,
                          max_steps=trainer.cfg.trainer.max_steps, log=str(log), eta_seconds=None)
        self._first = None
        self.write(force=True)

    def __call__(self, event: Any) -> None:
        now = time.perf_counter()
        if self._first is None or event.stage != self.state["stage"]:
            self._first = (event.step, now)
        done = event.step - self._first[0]
        rate = (now - self._first[1]) / done if done > 0 else None
        eta = None if rate is None else rate * (event.max_steps - event.step)
        self.state.update(state="running", stage=event.stage, step=event.step, max_steps=event.max_steps,
                          terms={k: v for k, v in event.terms.items() if isinstance(v, (int, float))},
                          eta_seconds=eta)
        if event.preview is not None:
            self.state["preview"] = str(Path(event.preview).relative_to(self.run_dir))
        self.write(force=event.preview is not None or event.step == event.max_steps)

    def write(self, force: bool = False, **updates: Any) -> None:
        self.state.update(updates)
        now = time.perf_counter()
        if force or now - self._written >= self.every:
            write_json(progress_path(self.run_dir), self.state)
            self._written = now


def run_job(job: dict[str, Any]) -> int:
    """Run one job; returns the exit code (0 done, 130 stopped, 1 failed)."""
    from dreamengine.api import open_run, prepare
    from dreamengine.errors import DreamEngineError
    from dreamengine.trainer import Interrupted

    run_dir = Path(job["run_dir"])
    writer: ProgressWriter | None = None
    try:
        if job["action"] == "generate":
            run = prepare(job["prompt"], config=job.get("config"), system=job.get("system"),
                          overrides=job.get("overrides", []), run_dir=run_dir,
                          argv=["dreamengine", "generate", job["prompt"], *_choice(job), *job.get("overrides", [])])
        else:
            run = open_run(run_dir)
        writer = ProgressWriter(run_dir)
        run.on_stage = writer.on_stage
        if run.trainer is not None:
            writer.on_stage(run.trainer.stage, 0, 1, run.trainer)
        writer.write(force=True, state="running")
        asset = run.execute([writer])
        writer.write(force=True, state="done", eta_seconds=0.0,
                     files=[str(p.relative_to(run_dir)) for p in asset.files])
        return 0
    except Interrupted as stop:
        if writer is not None:
            writer.write(force=True, state="stopped", error=f"stopped at step {stop.step}; checkpoint saved")
        return 130
    except (DreamEngineError, Exception) as error:  # noqa: BLE001 - any failure is reported to the page
        message = str(error) if isinstance(error, DreamEngineError) else traceback.format_exc(limit=4)
        if writer is None:
            writer = ProgressWriter(run_dir)
        if run_dir.is_dir():
            writer.write(force=True, state="failed", error=message)
        print(message, file=sys.stderr)
        return 1


def _choice(job: dict[str, Any]) -> list[str]:
    """The job's --config / --system as on a command line (recorded in the manifest; the report names it)."""
    if job.get("system"):
        return ["--system", str(job["system"])]
    return ["--config", str(job["config"])] if job.get("config") else []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dreamengine.ui.worker JOB.json", file=sys.stderr)
        return 2
    return run_job(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main())
