"""Quickstart benchmark: prompt -> GLB for three toy prompts with the quickstart config.

Prints a markdown table and writes it to bench/results/quickstart.md: wall time (prompt to GLB, eval
included), steps, median seconds per step split into render / teacher / guidance (without the teacher)
/ backward + optimizer, peak resident memory, held-out mask IoU and PSNR.

    python bench/quickstart.py [--prompts "a red cube" "a blue torus" "a snowman"] [key=value ...]
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
RUNNER = """
import resource, sys
from dreamengine.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_prompt(prompt: str, overrides: list[str], workdir: Path) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", RUNNER, "generate", prompt, *overrides], cwd=workdir,
                            capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{prompt!r} failed:\n{result.stderr}")
    run_dir = next(p for p in (workdir / "runs").iterdir() if p.name.startswith(prompt.replace(" ", "-")))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    peak_kb = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return {"prompt": prompt, "wall": wall, "steps": timings["steps_timed"], "render": timings["render"],
            "teacher": timings["teacher"], "guidance": timings["guidance"] - timings["teacher"],
            "backward": timings["backward"], "peak_mb": peak_kb / 1024, "iou": metrics["mask_iou"],
            "psnr": metrics["psnr"], "glb": (run_dir / "final" / "model.glb").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", nargs="+", default=["a red cube", "a blue torus", "a snowman"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in args.prompts:
            rows.append(run_prompt(prompt, args.overrides, Path(tmp)))
            print(f"done: {rows[-1]['prompt']} in {rows[-1]['wall']:.1f} s", file=sys.stderr)
    header = ("| prompt | wall s (prompt to GLB) | steps | render s/step | teacher s/step | guidance s/step "
              "| backward+opt s/step | peak MB | held-out mask IoU | PSNR dB | GLB |")
    lines = [f"# Quickstart benchmark ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"config quickstart {' '.join(args.overrides)})", "",
             "Medians over the steps of one run; wall time includes startup, the teacher bank, export and eval.", "",
             header, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['wall']:.1f} | {r['steps']} | {r['render']:.4f} | {r['teacher']:.4f} | "
                     f"{r['guidance']:.4f} | {r['backward']:.4f} | {r['peak_mb']:.0f} | {r['iou']:.3f} | "
                     f"{r['psnr']:.2f} | {'yes' if r['glb'] else 'no'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = REPO / "bench" / "results" / "quickstart.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)


if __name__ == "__main__":
    main()
