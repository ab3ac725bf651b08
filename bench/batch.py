"""Batches on this machine: 6 toy prompts with 1 worker vs 2 workers (local process pool, then Ray).

Each configuration runs the same 6 short toy jobs into a fresh output folder (``dreamengine.batch.run_batch``);
the wall time includes worker start-up, teacher banks (cached on disk after the first build, so a warm-up
batch runs first) and the summary files. Ray's overhead per task is measured separately: tasks that import
nothing and return at once, on the same Ray instance, median round trip.

    python bench/batch.py [--steps 150] [key=value ...]

Prints a markdown table and writes bench/results/batch.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamengine.batch import Job, run_batch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a blue torus", "a green sphere", "a yellow cylinder", "a snowman", "a house"]


def jobs(steps: int, overrides: list[str]) -> list[Job]:
    settings = [f"trainer.max_steps={steps}", "trainer.preview_every=0", "report.turntable=false", *overrides]
    return [Job(line, prompt, overrides=settings) for line, prompt in enumerate(PROMPTS, start=1)]


def timed_batch(steps: int, overrides: list[str], workers: int, use_ray: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = run_batch(jobs(steps, overrides), out, workers=workers, retries=0, use_ray=use_ray)
        return time.perf_counter() - start, sum(r.status == "done" for r in results)


def ray_task_overhead(repeats: int = 50) -> float:
    """Median ms of submitting and getting back an empty Ray task."""
    import ray

    @ray.remote(num_cpus=1)
    def nothing() -> int:
        return 0

    ray.get(nothing.remote())  # start a worker
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(nothing.remote())
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    import ray

    timed_batch(2, args.overrides, 1, False)  # warm-up: builds and caches the teacher banks on disk
    rows = []
    for workers in (1, 2):
        seconds, done = timed_batch(args.steps, args.overrides, workers, False)
        rows.append(("local pool", workers, seconds, done))
        print(rows[-1], flush=True)
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            seconds, done = timed_batch(args.steps, args.overrides, workers, True)
            overhead = ray_task_overhead() if workers == 2 else None
        finally:
            ray.shutdown()
        rows.append(("Ray", workers, seconds, done))
        print(rows[-1], flush=True)
    base = {kind: seconds for kind, workers, seconds, _ in rows if workers == 1}
    lines = [f"# Batches of {len(PROMPTS)} toy prompts ({time.strftime('%Y-%m-%d')}, bench/batch.py)", "",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, ray {ray.__version__} "
             "(shared machine: expect noise). Each job: quickstart, "
             f"{args.steps} steps, no previews or turntable, export + eval; teacher banks cached on disk.", "",
             "| runner | workers | wall s | jobs done | speed-up vs 1 worker |", "|---|---:|---:|---:|---:|"]
    for kind, workers, seconds, done in rows:
        lines.append(f"| {kind} | {workers} | {seconds:.0f} | {done}/{len(PROMPTS)} | {base[kind] / seconds:.2f}x |")
    lines += ["", f"Ray overhead per task (empty task round trip, median of 50): {overhead:.1f} ms; Ray's 1-worker "
              f"batch took {rows[2][2] - rows[0][2]:+.0f} s against the local pool's (start-up, worker imports)."]
    table = "\n".join(lines) + "\n"
    print(table)
    (REPO / "bench" / "results" / "batch.md").write_text(table)


if __name__ == "__main__":
    main()
