"""What the run report adds to a quickstart run: turntable render, video encodes, page writing.

Run from the repository root: ``python bench/report.py [--steps 300] [--repeats 3]``. Trains the quickstart
("a red cube") for ``--steps`` steps in a temporary run directory (so the occupancy grid is as sparse as
in a real run), exports the GLB, then times each part of the report with the run's default turntable
settings (36 frames at 96 px on a CPU), and compares with the training time per step. Prints a markdown
table and writes it to bench/results/report.md. The machine's load average is recorded with the numbers:
on a shared machine, compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dreamengine.config import load_config
from dreamengine.core.cameras import CameraSampler
from dreamengine.report import turntable_settings, write_report
from dreamengine.report.turntable import orbit, render_frames, turntable_fps, write_gif, write_mp4
from dreamengine.results import export_run
from dreamengine.runs import init_run_dir
from dreamengine.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "report.md"


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("quickstart", [f"trainer.max_steps={args.steps}", "trainer.preview_every=100",
                                         "trainer.progress=false", f"output_dir={tmp}"], prompt="a red cube")
        run_dir = Path(tmp) / "run"
        trainer = Trainer(cfg, run_dir)
        init_run_dir(run_dir, cfg, ["bench/report.py"])
        start = time.perf_counter()
        trainer.fit()
        train_s = time.perf_counter() - start
        export_run(trainer.scenes, trainer.background, trainer.renderers, cfg, run_dir, ["glb"])

        frames_n, size = turntable_settings(cfg, trainer.device)
        cameras = orbit(CameraSampler.from_config(cfg.camera), frames_n)
        frames = render_frames(trainer.render_views, cameras, size, size)
        fps = turntable_fps(frames_n)
        rows = [
            ("train one step (mean over the run)", train_s / args.steps),
            (f"turntable render ({frames_n} frames, {size} px)",
             median_s(lambda: render_frames(trainer.render_views, cameras, size, size), args.repeats)),
            ("MP4 encode (H.264, imageio-ffmpeg)", median_s(lambda: write_mp4(frames, run_dir / "t.mp4", fps),
                                                             args.repeats)),
            ("GIF encode (pillow)", median_s(lambda: write_gif(frames, run_dir / "t.gif", fps), args.repeats)),
            ("write_report (GLB embedded)", median_s(lambda: write_report(run_dir), args.repeats)),
        ]
        glb_kb = (run_dir / "final" / "model.glb").stat().st_size / 1000
        html_kb = (run_dir / "report.html").stat().st_size / 1000

    per_step = rows[0][1]
    total = sum(seconds for _, seconds in rows[1:])
    lines = [f"# Run report cost ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end)", "",
             f"Quickstart \"a red cube\" trained {args.steps} steps; report parts timed with median of "
             f"{args.repeats}. GLB {glb_kb:.0f} kB, report.html {html_kb:.0f} kB (+ the 1.07 MB viewer script).", "",
             "| part | seconds | in training steps |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.3f} | {seconds / per_step:.1f} |" for name, seconds in rows]
    lines.append(f"| **report total** | **{total:.2f}** | **{total / per_step:.0f}** |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
