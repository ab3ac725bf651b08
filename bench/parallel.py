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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--modes", nargs="+", default=["sequential", "workers2", "inprocess"])
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--out", default="parallel")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
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
