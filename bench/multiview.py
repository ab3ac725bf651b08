"""Single-view SDS against the multi-view teacher on the six view-asymmetric toy objects, at about equal training time.

For each object, runs ``dreamengine generate`` twice (seed 0, NeRF): ``single`` is the quickstart (single-view toy
teacher, SDS, 600 steps of one 48 px view) and ``multi`` is ``mvdream-toy`` (the exact multi-view toy teacher,
MVDream's x0-reconstruction SDS, 300 steps of one group of four 32 px views). Reads each run's metrics.json and
timings.json: held-out mask IoU and PSNR (25 views: elevations -10, 20, 50 and overhead), the Janus score (back
views that look like the back of a two-faced object), and the training time (steps x the median seconds of a
step's render, guidance, backward and after-step parts). Prints a markdown table and writes
bench/results/multiview.md.

    python bench/multiview.py [--objects "a snowman" ...] [--workdir DIR] [--runs single multi]

``--workdir`` keeps the runs and reuses finished ones. The meshes are not exported (``export.formats=[]``) to keep
the benchmark near half an hour on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OBJECTS = ["a snowman", "a house", "a penguin", "a mug", "a car", "a duck"]
RUNS = {"single": ["--config", "quickstart", "teacher.name=toyworld", "optim.lr_encoding=0.01",
                   "optim.lr_network=0.001", "camera.elevation_range=[-10,60]"],
        "multi": ["--system", "mvdream-toy"]}
COMMON = ["trainer.progress=false", "trainer.preview_every=0", "export.formats=[]", "report.turntable=false"]
STEP_PARTS = ("render", "guidance", "backward", "after_step")


def run(kind: str, prompt: str, workdir: Path) -> dict:
    out = workdir / f"{kind}-{prompt.replace(' ', '-')}"
    done = out / "bench-row.json"
    if done.is_file():
        return json.loads(done.read_text())
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dreamengine.cli", "generate", prompt, *RUNS[kind],
                             f"output_dir={out}", *COMMON], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        return {"kind": kind, "prompt": prompt, "error": lines[-1], "wall": wall}
    metrics = json.loads(next(out.glob("*/metrics.json")).read_text())
    timings = json.loads(next(out.glob("**/timings.json")).read_text())
    train = timings["steps_timed"] * sum(timings.get(part, 0.0) for part in STEP_PARTS)
    row = {"kind": kind, "prompt": prompt, "wall": wall, "train": train, "steps": timings["steps_timed"], **metrics}
    done.write_text(json.dumps(row))
    return row


def fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> list[str]:
    lines = ["| object | single-view IoU | multi-view IoU | single PSNR dB | multi PSNR dB | single Janus | "
             "multi Janus | single train s (steps) | multi train s (steps) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["kind"], r["prompt"]): r for r in rows}
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        single, multi = by.get(("single", prompt), {}), by.get(("multi", prompt), {})
        cells = [fmt(single.get("mask_iou"), ".3f"), fmt(multi.get("mask_iou"), ".3f"), fmt(single.get("psnr"), ".2f"),
                 fmt(multi.get("psnr"), ".2f"), fmt(single.get("janus_score"), ".2f"),
                 fmt(multi.get("janus_score"), ".2f"),
                 f"{fmt(single.get('train'), '.0f')} ({single.get('steps', '-')})",
                 f"{fmt(multi.get('train'), '.0f')} ({multi.get('steps', '-')})"]
        errors = [f"{kind} failed: {r['error']}" for kind, r in (("single", single), ("multi", multi)) if "error" in r]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |" + (f" {'; '.join(errors)}" if errors else ""))
    for kind in ("single", "multi"):
        done = [r for r in rows if r["kind"] == kind and "mask_iou" in r]
        if done:
            mean = {key: sum(r[key] for r in done) / len(done) for key in ("mask_iou", "psnr", "janus_score", "train")}
            failures = sum(r["janus_score"] >= 0.5 for r in done)
            lines.append(f"\n{kind}-view mean over {len(done)} objects: mask IoU {mean['mask_iou']:.3f}, PSNR "
                         f"{mean['psnr']:.2f} dB, Janus {mean['janus_score']:.2f} ({failures} Janus failures, score "
                         f">= 0.5), training {mean['train']:.0f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=OBJECTS)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--workdir", default=None, help="keep the runs here (and reuse finished ones)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for prompt in args.objects:
            for kind in args.runs:
                rows.append(run(kind, prompt, workdir))
                print(f"done: {kind} / {prompt}: {rows[-1].get('mask_iou', rows[-1].get('error'))}", file=sys.stderr,
                      flush=True)
    threads = f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if os.environ.get("OMP_NUM_THREADS") else ""
    lines = [f"# Single-view vs multi-view teacher on the view-asymmetric toy objects ({time.strftime('%Y-%m-%d')}, "
             f"NeRF, seed 0, bench/multiview.py{threads})", "",
             "single: `--config quickstart teacher.name=toyworld`, learning rates 0.01 / 0.001, elevations -10..60 "
             "(text-only toy teacher, SDS CFG 7.5, 600 steps x 1 view at 48 px); multi: "
             "`--system mvdream-toy` (multi-view toy teacher, MVDream's x0-reconstruction SDS, CFG 3, rescale 0.5, "
             "300 steps x 4 views at 32 px). Held-out mask IoU and PSNR over 25 views; Janus: fraction of 5 back "
             "views closer to the back of the object's two-faced version (dreamengine/evaluate.py).", "",
             *table(rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "bench" / "results" / "multiview.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
