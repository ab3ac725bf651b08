"""Turntable + report for a trained scene: what ``dreamengine report`` and the end of ``generate`` run."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from dreamengine.core.cameras import CameraSampler
from dreamengine.report.page import write_report
from dreamengine.report.turntable import RenderFn, make_turntable


def turntable_settings(cfg: Any, device: torch.device | str) -> tuple[int, int]:
    """(frames, size) of a run's turntable: ``report.turntable_frames`` / ``turntable_size``, or when 0:

    the size is twice the training resolution rounded up to a multiple of 16 (64 to 512 pixels); a GPU
    renders 90 frames, a CPU 36 (one turn plays in 3 s either way, see :func:`turntable_fps`). The
    quickstart's turntable (36 frames at 96 px) costs about 75 training steps on a CPU, ~12% of its 600
    (bench/results/report.md); ``report.turntable=false`` skips it.
    """
    report = getattr(cfg, "report", None)
    size = 16 * -(-2 * max(cfg.camera.height, cfg.camera.width) // 16)
    size = min(512, max(64, size))
    frames = 90 if torch.device(device).type != "cpu" else 36
    if report is not None:
        frames, size = report.turntable_frames or frames, report.turntable_size or size
    return frames, size


def report_run(run_dir: Path, cfg: Any, render: RenderFn | None, device: torch.device | str = "cpu",
               frames: int | None = None, size: int | None = None, announce: bool = True) -> Path:
    """Render the turntable with ``render`` (skipped when None) into ``run_dir/final``, then write the report.
    ``frames`` and ``size`` override :func:`turntable_settings`; ``announce`` prints the turntable's line."""
    if render is not None:
        default_frames, default_size = turntable_settings(cfg, device)
        frames, size = frames or default_frames, size or default_size
        start = time.perf_counter()
        make_turntable(render, CameraSampler.from_config(cfg.camera), run_dir / "final", frames, size)
        if announce:
            print(f"wrote {run_dir / 'final' / 'turntable.mp4'} ({frames} frames at {size} px in "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)
    return write_report(run_dir)


def report_after_training(run_dir: Path, cfg: Any, render: RenderFn, device: torch.device | str) -> Path | None:
    """Turntable (when ``report.turntable``) and report at the end of a run. A failure here prints a warning and
    returns None: the checkpoint, the exported model and the metrics are already on disk and must not be lost
    over a report. Prints nothing else: the caller lists the files after its summary."""
    try:
        path = report_run(run_dir, cfg, render if cfg.report.turntable else None, device, announce=False)
    except Exception as error:  # noqa: BLE001 (any failure, including bugs, only costs the report)
        print(f"warning: the run report was not written ({type(error).__name__}: {error}); the run's results are "
              f"saved. Retry with: dreamengine report {run_dir}", file=sys.stderr, flush=True)
        return None
    return path
