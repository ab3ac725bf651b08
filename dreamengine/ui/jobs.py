"""The UI's job queue: one generation at a time, each in its own worker process (:mod:`dreamengine.ui.worker`).

Jobs wait in order; a scheduler thread starts the next one when the previous worker exits. Stop sends SIGINT to
the running worker (the trainer saves a checkpoint and exits) or drops a waiting job. Every job's spec and its
worker's output are kept in ``RUNS/.ui/jobs/`` so a failure is explained on the page. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamengine.core.files import write_json
from dreamengine.errors import DreamEngineError
from dreamengine.runs import plan_run_dir


@dataclass
class Job:
    """One queued generation or resume."""

    id: int
    action: str  # generate | resume
    run_dir: Path
    prompt: str
    spec: dict[str, Any]
    state: str = "queued"  # queued | running | done | stopped | failed | cancelled
    process: subprocess.Popen | None = None
    log: Path | None = None
    returncode: int | None = None
    created: float = field(default_factory=time.time)


class JobQueue:
    """Runs jobs one at a time under ``runs_dir``; thread-safe (Gradio handlers run in several threads)."""

    def __init__(self, runs_dir: Path, python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.runs_dir = runs_dir.resolve()
        self.jobs_dir = self.runs_dir / ".ui" / "jobs"
        self.python = python
        self.env = env
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._schedule, name="dreamengine-ui-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ submitting
    def submit_generate(self, prompt: str, config: str | None, system: str | None, overrides: list[str]) -> Job:
        """Queue a new run; its directory ``RUNS/<slug>-<time>`` is reserved now (created by the worker)."""
        if not prompt.strip():
            raise DreamEngineError("the prompt is empty: type what to make, e.g. 'a red cube'")
        with self._lock:
            run_dir = self._new_run_dir(prompt)
            spec = {"action": "generate", "prompt": prompt, "config": config, "system": system,
                    "overrides": [*overrides, f"output_dir='{self.runs_dir}'"], "run_dir": str(run_dir)}
            return self._add(Job(next(self._ids), "generate", run_dir, prompt, spec))

    def submit_resume(self, run_dir: Path) -> Job:
        """Queue the continuation of a stopped run (its directory must be inside the runs folder)."""
        run_dir = self.inside(run_dir)
        with self._lock:
            if any(j.run_dir == run_dir and j.state in ("queued", "running") for j in self.jobs):
                raise DreamEngineError(f"{run_dir.name} is already queued or running")
            spec = {"action": "resume", "run_dir": str(run_dir)}
            return self._add(Job(next(self._ids), "resume", run_dir, _prompt_of(run_dir), spec))

    def inside(self, path: Path | str) -> Path:
        """``path`` resolved, refused unless it is a folder inside the runs folder."""
        resolved = (self.runs_dir / path).resolve()
        if resolved == self.runs_dir or not resolved.is_relative_to(self.runs_dir) or not resolved.is_dir():
            raise DreamEngineError(f"{path} is not a run folder inside {self.runs_dir}")
        return resolved

    def _new_run_dir(self, prompt: str) -> Path:
        taken = {j.run_dir for j in self.jobs}
        base = plan_run_dir(_Named(prompt, str(self.runs_dir)))
        run_dir, suffix = base, 1
        while run_dir in taken or run_dir.exists():
            suffix += 1
            run_dir = base.with_name(f"{base.name}-{suffix}")
        return run_dir

    def _add(self, job: Job) -> Job:
        self.jobs.append(job)
        self._wake.set()
        return job

    # ------------------------------------------------------------------------------------------ control
    def stop(self, job_id: int | None = None) -> Job | None:
        """SIGINT to the running job (it checkpoints and exits), or cancel a queued one; returns the job."""
        with self._lock:
            job = self.running() if job_id is None else next((j for j in self.jobs if j.id == job_id), None)
            if job is None:
                return None
            if job.state == "queued":
                job.state = "cancelled"
            elif job.state == "running" and job.process is not None:
                job.process.send_signal(signal.SIGINT)
            return job

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.state == "running"), None)

    def latest(self) -> Job | None:
        with self._lock:
            return self.jobs[-1] if self.jobs else None

    def table(self) -> list[list[Any]]:
        """Rows (job, action, prompt, run, state) for the page's queue table, newest last."""
        with self._lock:
            return [[j.id, j.action, j.prompt, j.run_dir.name, j.state] for j in self.jobs]

    def wait(self, job: Job, timeout: float | None = None) -> str:
        """Block until ``job`` leaves the queued/running states; returns its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.state in ("queued", "running"):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} still {job.state}")
            time.sleep(0.1)
        return job.state

    def close(self, timeout: float = 60.0) -> None:
        """Stop the running job (checkpointed) and the scheduler; queued jobs are cancelled."""
        with self._lock:
            self._closed = True
            for job in self.jobs:
                if job.state == "queued":
                    job.state = "cancelled"
            running = self.running()
            if running is not None and running.process is not None:
                running.process.send_signal(signal.SIGINT)
        self._wake.set()
        if running is not None and running.process is not None:
            try:
                running.process.wait(timeout)
            except subprocess.TimeoutExpired:
                running.process.kill()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------ the thread
    def _schedule(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                if self._closed or self.running() is not None:
                    continue
                job = next((j for j in self.jobs if j.state == "queued"), None)
                if job is None:
                    continue
                self._start(job)
            self._watch(job)

    def _start(self, job: Job) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        spec_path = write_json(self.jobs_dir / f"job-{job.id:04d}.json", job.spec)
        job.log = self.jobs_dir / f"job-{job.id:04d}.log"
        env = dict(os.environ if self.env is None else self.env)
        with open(job.log, "w") as log:
            # its own session: a Ctrl-C in the UI's terminal reaches the worker only through close() (checkpointed)
            job.process = subprocess.Popen([self.python, "-m", "dreamengine.ui.worker", str(spec_path)],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        job.state = "running"

    def _watch(self, job: Job) -> None:
        assert job.process is not None
        code = job.process.wait()
        with self._lock:
            job.returncode = code
            job.state = {0: "done", 130: "stopped"}.get(code, "failed")
            self._wake.set()

    def error_text(self, job: Job, lines: int = 15) -> str:
        """The last lines of a job's worker output (its error message or traceback)."""
        if job.log is None or not job.log.is_file():
            return ""
        return "\n".join(job.log.read_text(errors="replace").splitlines()[-lines:])


class _Named:
    """What :func:`plan_run_dir` reads from a config: the prompt and the output folder."""

    def __init__(self, prompt: str, output_dir: str) -> None:
        self.prompt = prompt
        self.output_dir = output_dir


def _prompt_of(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "manifest.json").read_text())["prompt"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return run_dir.name
