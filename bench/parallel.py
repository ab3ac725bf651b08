"""trainer.parallel (DreamPropeller's Picard iteration) against the sequential run, on the toy world.

For SDS and VSD with a NeRF and with 3D Gaussians, one prompt each: the sequential run
(``trainer.parallel.window=1`` with ``seed_per_step=true``: the same random numbers per step as the Picard runs),
the Picard iteration with 2 worker processes (this machine's cores), and in one process (the window evaluated one
step after another: no speed-up here, but the evaluations per step of one GPU per window step). Per run: training
wall time (``fit_seconds``, worker start-up included), the whole command's wall time, held-out mask IoU and PSNR
(strict evaluation), gradient evaluations per step taken and steps per Picard iteration (the paper's efficiency
measure: with one GPU per window step an iteration costs about one evaluation, so the GPU speed-up is about the
steps per iteration, less replay and transfer), and the speed-up against the sequential run of the same row.

    python bench/parallel.py [--rows nerf-sds gaussian-vsd ...] [--window 4] [--prompt "a red cube"]
        [--modes sequential workers2 inprocess] [--out parallel] [key=value ...]

Writes bench/results/NAME.md (default parallel.md). Runs one at a time (each uses the whole machine).

    python bench/parallel.py --bound [--rows ...] [--steps 150]

measures instead what N worker processes (N: this machine's CPUs) can gain here at most: the training step's median
time in one run with all of torch's threads (T_seq, the sequential run) and in N single-threaded runs going at once
(T_worker, each of N workers). N workers evaluate N gradients in T_worker where the sequential run takes N steps in
N T_seq, so with ``e`` evaluations per step taken the speed-up is at most ``N T_seq / (e T_worker)``: an upper bound
that leaves out the replay, the transfers and the start-up. Writes bench/results/parallel_bound.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST = ["report.turntable=false", "trainer.preview_every=0", "trainer.progress=false"]
ROWS: dict[str, tuple[str, list[str]]] = {  # name: (config, overrides)
    # the quickstart as measured before it switched teacher and learning rates
    "nerf-sds": ("quickstart", ["teacher.name=toyworld", "optim.lr_encoding=0.01", "optim.lr_network=0.001",
                                "camera.elevation_range=[-10,60]"]),
    "nerf-vsd": ("vsd-toy", []),
    "gaussian-sds": ("gaussian-toy", []),
    "gaussian-vsd": ("gaussian-toy", ["guidance.name=vsd", "guidance.camera_condition_type=c2w",
                                      "guidance.camera_dropout=0.1", "guidance.pixel_model_lr=1e-3",
                                      "guidance.pixel_model_width=16"]),
}


def modes(window: int) -> dict[str, list[str]]:
    # the sequential run with per-step seeds: the trajectory the Picard iteration converges to (the default
    # random stream would add a seed's variance to the IoU difference)
    return {"sequential": ["trainer.parallel.seed_per_step=true"],
            "workers2": [f"trainer.parallel.window={window}", "trainer.parallel.workers=2"],
            "inprocess": [f"trainer.parallel.window={window}", "trainer.parallel.workers=1"]}


def run(config: str, prompt: str, overrides: list[str], workdir: Path) -> dict:
    """One ``dreamengine generate``; its metrics.json and timings.json."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    command = [sys.executable, "-m", "dreamengine.cli", "generate", prompt, "--config", config,
               f"output_dir={out}", *FAST, *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    run_dir = next(p.parent for p in out.rglob("metrics.json"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    return {"wall": wall, "fit": timings["fit_seconds"], "iou": metrics["mask_iou"], "psnr": metrics["psnr"],
            "parallel": timings.get("parallel")}


STEP_TIMES = """
import json, sys, tempfile, time
from pathlib import Path
from dreamengine.config import load_config
from dreamengine.trainer import Trainer
config, prompt, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cfg = load_config(config, ["trainer.progress=false", "trainer.preview_every=0", *overrides], prompt=prompt)
trainer = Trainer(cfg, Path(tempfile.mkdtemp()))
times = []
for index in range(20 + steps):  # 20 warm-up steps
    start = time.perf_counter()
    trainer.train_step()
    times.append(time.perf_counter() - start)
print(json.dumps(times[20:]))
"""


def step_times(config: str, prompt: str, overrides: list[str], steps: int, processes: int, threads: int | None
               ) -> list[float]:
    """Seconds per training step of ``processes`` runs at once, each with ``threads`` torch threads (None: all)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-c", STEP_TIMES, config, prompt, str(steps), *overrides]
    running = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    times: list[float] = []
    for process in running:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"failed: step times of {config} {overrides}\n{err[-4000:]}")
        times += json.loads(out.strip().splitlines()[-1])
    return times


def bound(args: argparse.Namespace) -> None:
    """The table of ``--bound``: thread scaling of a step, and the speed-up N workers can reach at most."""
    workers = os.cpu_count() or 1
    lines = ["# trainer.parallel: the most N worker processes can gain on this machine", "",
             f"`python bench/parallel.py {' '.join(sys.argv[1:])}` on {platform.processor() or platform.machine()}, "
             f"{workers} CPUs, {args.steps} steps after 20 warm-up steps; medians. T_seq: a step of one run with "
             f"all threads (the sequential run); T_worker: a step of each of N = {workers} single-threaded runs "
             "going at once (N workers sharing the cores, caches and memory). N workers evaluate N gradients in "
             "T_worker while the sequential run takes N steps in N T_seq, so with e gradient evaluations per step "
             "taken the speed-up is at most N T_seq / (e T_worker), before replay, transfers and start-up.", "",
             "| row | N | T_seq ms | T_worker ms | bound e=1.00 | bound e=1.10 |", "|---|---|---|---|---|---|"]
    for row in args.rows:
        config, row_overrides = ROWS[row]
        overrides = [*row_overrides, *args.overrides]
        sequential = statistics.median(step_times(config, args.prompt, overrides, args.steps, 1, None))
        worker = statistics.median(step_times(config, args.prompt, overrides, args.steps, workers, 1))
        lines.append(f"| {row} | {workers} | {1000 * sequential:.1f} | {1000 * worker:.1f} | "
                     f"{workers * sequential / worker:.2f}x | {workers * sequential / (1.1 * worker):.2f}x |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "bench" / "results" / "parallel_bound.md"
    out.write_text(text)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--modes", nargs="+", default=["sequential", "workers2", "inprocess"])
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--out", default="parallel")
    parser.add_argument("--bound", action="store_true", help="measure the thread scaling bound instead")
    parser.add_argument("--steps", type=int, default=150, help="--bound: timed steps per row")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.bound:
        bound(args)
        return
    workdir = Path(tempfile.mkdtemp(prefix="dreamengine-bench-parallel-"))
    settings = modes(args.window)
    results: dict[tuple[str, str], dict] = {}
    for row in args.rows:
        config, row_overrides = ROWS[row]
        for mode in args.modes:
            result = run(config, args.prompt, [*row_overrides, *settings[mode], *args.overrides], workdir)
            results[(row, mode)] = result
            print(f"{row:13s} {mode:10s} fit {result['fit']:7.1f} s  IoU {result['iou']:.3f}  "
                  f"PSNR {result['psnr']:.2f}", flush=True)

    lines = [f"# trainer.parallel (DreamPropeller) vs sequential, prompt {args.prompt!r}", "",
             f"`python bench/parallel.py {' '.join(sys.argv[1:])}` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch threads default; window {args.window}. "
             "fit: training wall time (worker start-up included); speed-up: sequential fit / this fit; "
             "eval/step: gradient evaluations per step taken; steps/iter: steps taken per Picard iteration "
             "(with one GPU per window step, the projected speed-up before replay and transfer costs).", "",
             "| row | mode | fit s | command s | speed-up | IoU | dIoU | PSNR | eval/step | steps/iter |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in args.rows:
        base = results.get((row, "sequential"))
        for mode in args.modes:
            r = results[(row, mode)]
            speed = f"{base['fit'] / r['fit']:.2f}x" if base else "-"
            diou = f"{r['iou'] - base['iou']:+.3f}" if base else "-"
            par = r["parallel"] or {}
            eps = f"{par['evaluations_per_step']:.2f}" if par else "1.00"
            spi = f"{par['steps_per_iteration']:.2f}" if par else "1.00"
            lines.append(f"| {row} | {mode} | {r['fit']:.1f} | {r['wall']:.1f} | {speed} | {r['iou']:.3f} | {diou} | "
                         f"{r['psnr']:.2f} | {eps} | {spi} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "bench" / "results" / f"{args.out}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
