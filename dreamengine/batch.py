"""Many prompts: ``dreamengine batch PROMPTS.txt|.jsonl`` on a local process pool or a Ray cluster.

A prompts file holds one job per line: a plain prompt (``.txt``; blank lines and ``#`` comments skipped), or a
JSON object (``.jsonl``) with ``prompt`` and optionally ``seed``, ``system``, ``config`` and ``overrides`` (a
list of ``key=value`` strings or a mapping). Every job is checked before anything runs (its config is loaded
and its prompt parsed); a bad line is reported with its line number and the other jobs run.

Each job has a stable folder ``OUT/<prompt slug>-<hash of its settings>``: a job whose folder holds
``final/model.glb`` and ``metrics.json`` is finished and skipped, a started one is resumed from its
checkpoint, so running the same command again continues a batch. A job that fails (an error, or its worker
process dying) is retried up to ``retries`` times, then recorded as failed with its error.

Where jobs run:

* **local** (default): one worker process per GPU (one on a CPU machine), each an executor of its own, so a
  worker that dies takes only its own job down; a worker keeps its teacher loaded between jobs
  (:func:`dreamengine.teachers.cache.keep_teachers_loaded`).
* **Ray** (``ray_address``: ``auto``, ``HOST:PORT``, or ``local`` to start a local instance; or a Ray already
  initialized in this process): each job is a Ray task with ``num_gpus=1`` where the cluster has GPUs, retried by
  Ray (``max_retries``, ``retry_exceptions``). Ray reuses its worker processes, so teachers stay loaded there too.

At the end: ``summary.json`` and ``summary.md`` (one row per job), ``contact_sheet.png`` (one frame per prompt)
and ``index.html`` (a page linking every run's report).
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dreamengine.core.files import atomic_write, write_json
from dreamengine.errors import DreamEngineError

JOB_KEYS = {"prompt", "seed", "system", "config", "overrides"}


@dataclass
class Job:
    """One line of a prompts file."""

    line: int
    prompt: str
    seed: int | None = None
    system: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def all_overrides(self) -> list[str]:
        return [*self.overrides, *([f"seed={self.seed}"] if self.seed is not None else [])]

    @property
    def key(self) -> str:
        """The job's folder name: prompt slug + a hash of everything that defines the run."""
        from dreamengine.runs import slugify

        settings = json.dumps([self.prompt, self.seed, self.system, self.config, self.overrides])
        return f"{slugify(self.prompt, 32)}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


@dataclass
class JobResult:
    key: str
    line: int
    prompt: str
    status: str  # done | skipped | failed
    attempts: int = 0
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- reading
def read_jobs(path: str | Path, system: str | None = None, config: str | None = None,
              overrides: list[str] | None = None) -> tuple[list[Job], list[str]]:
    """The jobs of a prompts file (defaults from the command line, per-line settings win) and one message per
    bad line (``path:LINE: what is wrong``). Raises DreamEngineError when the file itself cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DreamEngineError(f"prompts file not found: {path}; give a .txt file with one prompt per line or a "
                               ".jsonl file with one JSON object per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DreamEngineError(f"cannot read prompts file {path}: {error}") from None
    jobs, errors, seen = [], [], {}
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            job = parse_line(text, number, path.suffix.lower() == ".jsonl", system, config, list(overrides or []))
            check_job(job)
        except DreamEngineError as error:
            errors.append(f"{path}:{number}: {error}")
            continue
        if job.key in seen:
            errors.append(f"{path}:{number}: the same job as line {seen[job.key]} (skipped; give it another seed)")
            continue
        seen[job.key] = number
        jobs.append(job)
    if not jobs and not errors:
        raise DreamEngineError(f"prompts file {path} has no prompts (only blank lines or # comments); write one "
                               "prompt per line, e.g. a red cube")
    return jobs, errors


def parse_line(text: str, number: int, is_jsonl: bool, system: str | None, config: str | None,
               overrides: list[str]) -> Job:
    """A prompts-file line -> Job (DreamEngineError saying what is wrong with it)."""
    if not is_jsonl:
        return Job(number, text.strip(), system=system, config=config, overrides=overrides)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DreamEngineError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise DreamEngineError("each line of a .jsonl file must be a JSON object such as {\"prompt\": \"a red cube\"}")
    unknown = sorted(set(record) - JOB_KEYS)
    if unknown:
        raise DreamEngineError(f"unknown key(s) {', '.join(unknown)}; a line may hold {', '.join(sorted(JOB_KEYS))}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DreamEngineError("missing or empty \"prompt\" (a non-empty string)")
    seed = record.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise DreamEngineError(f"\"seed\" must be an integer, got {seed!r}")
    for name in ("system", "config"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise DreamEngineError(f"\"{name}\" must be a string, got {record[name]!r}")
    line_overrides = record.get("overrides", [])
    if isinstance(line_overrides, dict):
        from dreamengine.systems import to_dotlist

        line_overrides = to_dotlist(line_overrides)
    if not isinstance(line_overrides, list) or not all(isinstance(o, str) for o in line_overrides):
        raise DreamEngineError("\"overrides\" must be a list of \"key=value\" strings or a mapping of keys to values")
    line_system, line_config = record.get("system"), record.get("config")
    if line_system is not None or line_config is not None:  # a line's own choice replaces the default one
        system, config = line_system, line_config
    return Job(number, prompt.strip(), seed, system, config, [*overrides, *line_overrides])


def check_job(job: Job) -> None:
    """Load the job's config(s) and parse its prompt (toy world) without building anything heavy."""
    from dreamengine.config import load_config

    if job.system is not None and job.config is not None:
        raise DreamEngineError("a job names both a system and a config; give one")
    if job.system is not None:
        from dreamengine.systems import load_system
        from dreamengine.systems.driver import plan_stages

        configs = plan_stages(load_system(job.system), job.prompt, job.all_overrides, Path("unused"))
    else:
        configs = [load_config(job.config or "quickstart", job.all_overrides, prompt=job.prompt)]
    for cfg in configs:
        if cfg.teacher.name in ("toyworld", "toyworld-multiview"):  # the toy teachers know their prompts
            from dreamengine.toyworld import parse_prompt

            parse_prompt(cfg.prompt)


# ------------------------------------------------------------------------------------------- one job
def is_finished(run_dir: Path) -> bool:
    return (run_dir / "final" / "model.glb").is_file() and (run_dir / "metrics.json").is_file()


def execute_job(job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Run (or resume) one job in this process; returns a JobResult as a dict. Runs in worker processes."""
    from dreamengine.api import open_run, prepare
    from dreamengine.errors import CheckpointError
    from dreamengine.teachers.cache import keep_teachers_loaded

    keep_teachers_loaded()
    spec = Job(**job)
    run_dir = Path(out_dir) / spec.key
    record_attempt(Path(out_dir), spec.key)
    start = time.perf_counter()
    result = JobResult(spec.key, spec.line, spec.prompt, "done", attempts=count_attempts(Path(out_dir), spec.key))
    try:
        if not is_finished(run_dir):
            run = None
            if (run_dir / "manifest.json").is_file():
                try:
                    run = open_run(run_dir)
                except CheckpointError:  # died before its first checkpoint: start again
                    run = None
            if run is None:
                shutil.rmtree(run_dir, ignore_errors=True)  # a start that died before its first checkpoint
                run = prepare(spec.prompt, config=spec.config, system=spec.system, overrides=spec.all_overrides,
                              run_dir=run_dir, argv=["dreamengine", "batch", f"line {spec.line}"])
            asset = run.execute()  # writes the run's report.html too
            result.metrics = asset.metrics or {}
    except Exception as error:  # recorded (and retried); the message says what failed
        result.status = "failed"
        result.error = str(error) if isinstance(error, DreamEngineError) else f"{type(error).__name__}: {error}"
        atomic_write(batch_state(Path(out_dir)) / f"{spec.key}.error.txt", traceback.format_exc())
    result.seconds = time.perf_counter() - start
    return asdict(result)


def batch_state(out_dir: Path) -> Path:
    """``OUT/.batch/``: each job's attempt log (``KEY.attempts.jsonl``) and last error (``KEY.error.txt``)."""
    folder = out_dir / ".batch"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record_attempt(out_dir: Path, key: str) -> None:
    """Append this attempt (worker pid, time) to the job's attempt log."""
    with open(batch_state(out_dir) / f"{key}.attempts.jsonl", "a") as file:
        file.write(json.dumps({"pid": os.getpid(), "started": time.time()}) + "\n")


def count_attempts(out_dir: Path, key: str) -> int:
    path = out_dir / ".batch" / f"{key}.attempts.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


# -------------------------------------------------------------------------------------------- pools
def default_workers() -> int:
    """One worker per visible GPU, one on a CPU machine."""
    import torch

    return max(torch.cuda.device_count(), 1)


def _init_worker(slot: int, gpus: int, threads: int) -> None:
    """A worker's share of the machine: GPU ``slot % gpus`` and ``threads`` CPU threads for torch.

    Without the thread cap every worker's torch would use all cores: N workers on N cores then run
    slower than one worker (bench/results/batch.md measured 0.66x for 2 workers on 2 cores).
    """
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def threads_per_worker(workers: int) -> int:
    """The machine's usable cores divided among ``workers`` (at least 1 each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def run_local(jobs: list[Job], out_dir: Path, workers: int, retries: int) -> list[JobResult]:
    """Jobs on ``workers`` single-process executors (a dead worker breaks only its own executor)."""
    import torch

    gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")

    count = max(1, min(workers, len(jobs)))
    threads = threads_per_worker(count)

    def new_executor(slot: int) -> futures.ProcessPoolExecutor:
        return futures.ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                           initargs=(slot, gpus, threads))

    slots = [new_executor(slot) for slot in range(count)]
    pending = deque(jobs)
    running: dict[futures.Future, tuple[Job, int]] = {}
    tries: dict[str, int] = {}
    results: list[JobResult] = []
    try:
        while pending or running:
            busy = {slot for _, slot in running.values()}
            for slot in range(len(slots)):
                if pending and slot not in busy:
                    job = pending.popleft()
                    tries[job.key] = tries.get(job.key, 0) + 1
                    running[slots[slot].submit(execute_job, asdict(job), str(out_dir))] = (job, slot)
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job, slot = running.pop(future)
                try:
                    result = JobResult(**future.result())
                except futures.process.BrokenProcessPool:
                    slots[slot].shutdown(wait=False, cancel_futures=True)
                    slots[slot] = new_executor(slot)
                    result = JobResult(job.key, job.line, job.prompt, "failed", count_attempts(out_dir, job.key),
                                       error="the worker process died (killed or out of memory)")
                if result.status == "failed" and tries[job.key] <= retries:
                    print(f"retrying line {job.line} ('{job.prompt}') after: {result.error}", flush=True)
                    pending.append(job)
                    continue
                results.append(result)
                print(f"{result.status}: line {job.line} '{job.prompt}' ({result.seconds:.0f} s)", flush=True)
    finally:
        for executor in slots:
            executor.shutdown(wait=True, cancel_futures=True)
    return results


def run_ray(jobs: list[Job], out_dir: Path, retries: int, address: str | None) -> list[JobResult]:
    """Jobs as Ray tasks (one GPU each where the cluster has GPUs), retried by Ray."""
    try:
        import ray
    except ImportError:
        raise DreamEngineError("--ray-address needs Ray: pip install 'ray>=2.9' (or run without --ray-address for a "
                               "local process pool)") from None
    if not ray.is_initialized():
        try:
            ray.init() if address == "local" else ray.init(address=address)
        except Exception as error:
            raise DreamEngineError(f"cannot connect to the Ray cluster at {address!r} ({error}); start one with "
                                   "'ray start --head', pass its address, or use --ray-address local") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(_execute_or_raise).options(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=retries,
                                                 retry_exceptions=[JobFailed])
    refs = {task.remote(asdict(job), str(out_dir)): job for job in jobs}
    results = []
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(ready[0])
        try:
            result = JobResult(**ray.get(ready[0]))
        except Exception as error:  # JobFailed after the last retry, or the worker died for good
            cause = error.cause if isinstance(getattr(error, "cause", None), JobFailed) else error
            message = str(cause.args[0]) if isinstance(cause, JobFailed) else f"{type(error).__name__}: {error}"
            result = JobResult(job.key, job.line, job.prompt, "failed", count_attempts(out_dir, job.key),
                               error=message.splitlines()[0] if message else "failed")
        results.append(result)
        print(f"{result.status}: line {job.line} '{job.prompt}' ({result.seconds:.0f} s)", flush=True)
    return results


class JobFailed(Exception):
    """Raised in a Ray task whose job failed, so that Ray retries it."""


def _execute_or_raise(job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    result = execute_job(job, out_dir)
    if result["status"] == "failed":
        raise JobFailed(result["error"])
    return result


# ---------------------------------------------------------------------------------------------- batch
def run_batch(jobs: list[Job], out_dir: str | Path, workers: int | None = None, retries: int = 2,
              ray_address: str | None = None, use_ray: bool = False) -> list[JobResult]:
    """Skip finished jobs, run the others (local pool, or Ray with ``ray_address``/``use_ray``), write the
    summary files. Returns one result per job, in file order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = [JobResult(j.key, j.line, j.prompt, "skipped", count_attempts(out_dir, j.key),
                         metrics=json.loads((out_dir / j.key / "metrics.json").read_text()))
               for j in jobs if is_finished(out_dir / j.key)]
    todo = [job for job in jobs if not is_finished(out_dir / job.key)]
    if skipped:
        print(f"{len(skipped)} job(s) already finished in {out_dir}: skipped", flush=True)
    ran: list[JobResult] = []
    if todo and (use_ray or ray_address is not None):
        ran = run_ray(todo, out_dir, retries, ray_address)
    elif todo:
        ran = run_local(todo, out_dir, workers or default_workers(), retries)
    results = sorted(skipped + ran, key=lambda r: r.line)
    write_summary(out_dir, results)
    return results


def write_summary(out_dir: Path, results: list[JobResult]) -> None:
    """summary.json, summary.md, contact_sheet.png and index.html of a batch folder."""

    write_json(out_dir / "summary.json", [asdict(r) for r in results])
    lines = ["| line | prompt | status | attempts | mask IoU | PSNR dB | seconds | folder |",
             "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        iou, psnr = r.metrics.get("mask_iou"), r.metrics.get("psnr")
        status = r.status if r.status != "failed" else f"failed: {r.error}"
        lines.append(f"| {r.line} | {r.prompt} | {status} | {r.attempts} | {'-' if iou is None else f'{iou:.3f}'} | "
                     f"{'-' if psnr is None else f'{psnr:.2f}'} | {r.seconds:.0f} | {r.key} |")
    atomic_write(out_dir / "summary.md", "\n".join(lines) + "\n")
    done = [r for r in results if r.status != "failed"]
    if done:
        from dreamengine.report import write_index

        write_contact_sheet(out_dir / "contact_sheet.png", [(out_dir / r.key, r.prompt) for r in done])
        write_index(out_dir, [out_dir / r.key for r in done])


def run_thumbnail(run_dir: Path) -> Any:
    """An [H, W, 3] uint8 frame of a finished run: its turntable thumbnail, else its last preview's first view."""
    import imageio.v3 as iio
    import numpy as np

    for candidate in (run_dir / "final" / "thumbnail.png",):
        if candidate.is_file():
            return np.asarray(iio.imread(candidate))[..., :3]
    previews = sorted(run_dir.rglob("previews/step-*.png"))
    if previews:
        grid = np.asarray(iio.imread(previews[-1]))[..., :3]
        side = grid.shape[0] // 2  # rows: rgb, opacity; views side by side, square
        return grid[:side, :side]
    return np.full((64, 64, 3), 200, dtype=np.uint8)


def write_contact_sheet(path: Path, runs: list[tuple[Path, str]], cell: int = 160, columns: int = 6) -> Path:
    """One labelled frame per run in a grid, as a PNG."""
    from PIL import Image, ImageDraw

    rows = (len(runs) + columns - 1) // columns
    sheet = Image.new("RGB", (cell * min(columns, len(runs)), (cell + 18) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (run_dir, prompt) in enumerate(runs):
        frame = Image.fromarray(run_thumbnail(run_dir)).resize((cell, cell), Image.Resampling.LANCZOS)
        x, y = (index % columns) * cell, (index // columns) * (cell + 18)
        sheet.paste(frame, (x, y))
        draw.text((x + 4, y + cell + 3), prompt[:26], fill="black")
    sheet.save(path)
    return path


__all__ = ["Job", "JobResult", "execute_job", "is_finished", "read_jobs", "run_batch", "write_contact_sheet"]
