"""Every toy system at full length: wall time, time per stage, and quality of the final result.

For each ``*-toy`` system and prompt, runs ``dreamengine generate PROMPT --system NAME`` in a subprocess and
reads the run's ``metrics.json`` (the last stage's evaluation and the per-stage summary): held-out mask IoU
and PSNR of the final scene against the toy world's ground truth, the Janus score (view-asymmetric
objects), the exported GLB's volumetric IoU against the true shape, and export fidelity (the GLB rendered
against the scene's own renders).

    python bench/systems.py [--systems dreamfusion-toy ...] [--prompts "a red cube" ...] [--workdir DIR] [--jobs 2]

The image-to-3D systems (their first stage needs --image: zero123-toy, magic123-toy, dreamgaussian-image-toy) are
left out by default; bench/image_to_3d.py measures them. ``--jobs`` runs that many at a time (each with
``OMP_NUM_THREADS=1`` unless it is set). Prints a markdown table and writes bench/results/systems.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dreamengine.systems import load_system, packaged_systems  # noqa: E402
from dreamengine.systems.driver import plan_stages  # noqa: E402

PROMPTS = ["a red cube", "a snowman"]


def text_to_3d(system: str) -> bool:
    """Whether a system runs from a prompt alone: its first stage's teacher reads text, or it samples its image."""
    first = plan_stages(load_system(system), "a red cube", [], Path("unused"))[0]
    return first.teacher.name != "toyworld-image" or first.image.sample


def run(system: str, prompt: str, workdir: Path, overrides: list[str]) -> dict:
    out = workdir / f"{system}-{prompt.replace(' ', '-')}"
    finished = list(out.glob("*/metrics.json"))
    env = {"OMP_NUM_THREADS": "1", **os.environ,
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    wall = None
    if not finished:  # --workdir keeps runs: a finished one is read, not run again
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dreamengine.cli", "generate", prompt, "--system", system,
                                 f"output_dir={out}", "trainer.progress=false", *overrides],
                                capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            return {"system": system, "prompt": prompt, "error": lines[-1], "wall": wall}
        finished = list(out.glob("*/metrics.json"))
    metrics = json.loads(finished[0].read_text())
    return {"system": system, "prompt": prompt, "wall": wall, **metrics}


def fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+",
                        default=sorted(n for n in packaged_systems() if n.endswith("-toy") and text_to_3d(n)))
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--workdir", default=None, help="keep the runs here (and reuse finished ones)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        def one(system: str, prompt: str) -> dict:
            row = run(system, prompt, workdir, args.overrides)
            print(f"done: {system} / {prompt}: {row.get('mask_iou', row.get('error'))}", file=sys.stderr, flush=True)
            return row

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda pair: one(*pair),
                                 [(system, prompt) for system in args.systems for prompt in args.prompts]))
    threads = os.environ.get("OMP_NUM_THREADS")
    lines = [f"# Systems on the toy world ({time.strftime('%Y-%m-%d')}, full length, seed 0, bench/systems.py)", "",
             "Shared 2-core machine" + (f", OMP_NUM_THREADS={threads}" if threads else "") + ": wall times are "
             "noisy. Quality is the final stage's scene against the toy world's ground truth on held-out views.", "",
             "| system | prompt | stages (s each) | wall s | mask IoU | PSNR dB | Janus | mesh vol. IoU | "
             "export fidelity dB / IoU |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['prompt']} | failed: {r['error']} | {fmt(r['wall'], '.0f')} "
                         "| | | | | |")
            continue
        stages = ", ".join(f"{s['stage']} {s['seconds']:.0f}" for s in r.get("stages", []))
        fidelity = r.get("export_fidelity") or {}
        mesh_iou = (r.get("mesh") or {}).get("volumetric_iou")
        lines.append(f"| {r['system']} | {r['prompt']} | {stages} | {fmt(r['wall'], '.0f')} | "
                     f"{fmt(r.get('mask_iou'), '.3f')} | {fmt(r.get('psnr'), '.2f')} | "
                     f"{fmt(r.get('janus_score'), '.2f')} | {fmt(mesh_iou, '.3f')} | "
                     f"{fmt(fidelity.get('psnr'), '.1f')} / {fmt(fidelity.get('mask_iou'), '.3f')} |")
    table = "\n".join(lines) + "\n"
    print(table)
    (REPO / "bench" / "results" / "systems.md").write_text(table)


if __name__ == "__main__":
    main()
