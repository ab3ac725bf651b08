"""Run the ``dreamengine`` CLI in a subprocess, as a user would, or in this process where the subprocess is not
the point (it saves the 3-7 s a new process spends importing torch, the package and torch._dynamo)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny settings for CLI tests: small renders, few samples, a small bank, no previews, a tiny turntable.
TINY = ["camera.height=24", "camera.width=24", "render.num_samples=24", "teacher.resolution=16",
        "teacher.elevations=[0,30,60]", "teacher.azimuth_step=30", "trainer.preview_every=0",
        "export.resolution=48", "export.level_fit_resolution=32", "eval.resolution=32", "eval.num_views=4",
        "report.turntable_frames=8", "report.turntable_size=32", "export.texture_size=128"]


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamengine.cli", *args], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def run_cli_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``dreamengine.cli.main(args)`` run in ``cwd``, its exit code and captured output shaped like ``run_cli``'s.

    ``SystemExit`` (argparse's usage errors) becomes the exit code, as in a process; any other exception escaping
    ``main`` escapes here too (the CLI must turn every user error into a message)."""
    from dreamengine.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    deterministic = torch.are_deterministic_algorithms_enabled()  # deterministic=true sets it for the process
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(args)
            except SystemExit as stop:  # argparse's usage errors exit (code 2)
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        os.chdir(previous)
        torch.use_deterministic_algorithms(deterministic)
    return subprocess.CompletedProcess(["dreamengine", *args], code, stdout.getvalue(), stderr.getvalue())


def popen_cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamengine.cli", *args], cwd=tmp_path, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run_dir(tmp_path: Path) -> Path:
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]
