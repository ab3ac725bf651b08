"""The guidance table: every method x NeRF on toy prompts, same seed and steps.

For each method (its `<method>-toy` config; SDS uses `quickstart` with the text-only toy teacher, the others'
teacher) and prompt, runs `dreamengine generate` and reads the run's metrics.json: held-out mask IoU, PSNR,
foreground saturation (ours / ground truth), Janus score (view-asymmetric objects), exported-mesh volumetric
IoU, wall time. Prints a markdown table and writes it to bench/results/guidance.md.

    python bench/guidance.py [--methods sds bsd ...] [--prompts "a red cube" ...] [--workdir DIR] [key=value ...]

``--workdir`` keeps the run directories (add ``trainer.preview_every=600`` to keep a final preview each) and
reuses the runs already finished there, so an interrupted table can be completed or single methods redone.
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
METHODS = ["sds", "vsd", "bsd", "csm", "ism", "csd", "nfsd", "asd", "cds", "dsd"]
PROMPTS = ["a red cube", "a blue torus", "a snowman", "a penguin"]


def run(method: str, prompt: str, overrides: list[str], workdir: Path) -> dict:
    config = "quickstart" if method == "sds" else f"{method}-toy"
    out = workdir / f"{method}-{prompt.replace(' ', '-')}"
    done = out / "bench-row.json"
    if done.is_file():  # a kept --workdir: reuse finished runs (delete a run's folder to redo it)
        return json.loads(done.read_text())
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    # every method under the same teacher and learning rates (the <method>-toy configs': quickstart.yaml's earlier)
    text_only = ["teacher.name=toyworld", "optim.lr_encoding=0.01", "optim.lr_network=0.001",
                 "camera.elevation_range=[-10,60]"] if method == "sds" else []
    result = subprocess.run([sys.executable, "-m", "dreamengine.cli", "generate", prompt, "--config", config,
                             f"output_dir={out}", "trainer.preview_every=0", *text_only, *overrides],
                            capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return {"method": method, "prompt": prompt, "error": result.stderr.strip().splitlines()[-1], "wall": wall}
    metrics = json.loads(next(out.glob("*/metrics.json")).read_text())
    row = {"method": method, "prompt": prompt, "wall": wall, **metrics}
    done.write_text(json.dumps(row))
    return row


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--workdir", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for method in args.methods:
            for prompt in args.prompts:
                rows.append(run(method, prompt, args.overrides, workdir))
                print(f"done: {method} / {prompt} in {rows[-1]['wall']:.0f} s", file=sys.stderr)
    threads = f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if os.environ.get("OMP_NUM_THREADS") else ""
    lines = [f"# Guidance methods on the toy world ({time.strftime('%Y-%m-%d')}, NeRF, seed 0, "
             f"overrides: {' '.join(args.overrides) or 'none'}{threads})", "",
             "| method | prompt | mask IoU | PSNR dB | saturation (truth) | Janus | mesh vol. IoU | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['prompt']} | failed: {r['error']} | | | | | {r['wall']:.0f} |")
            continue
        mesh = r.get("mesh", {})
        lines.append(f"| {r['method']} | {r['prompt']} | {cell(r, 'mask_iou', '.3f')} | {cell(r, 'psnr', '.2f')} | "
                     f"{cell(r, 'saturation', '.2f')} ({cell(r, 'true_saturation', '.2f')}) | "
                     f"{cell(r, 'janus_score', '.2f')} | {cell(mesh, 'volumetric_iou', '.3f')} | {r['wall']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = REPO / "bench" / "results" / "guidance.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
