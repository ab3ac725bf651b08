"""Run directories: ``runs/<slug>-<time>/`` with the resolved config, a manifest, checkpoints, outputs.

Layout::

    config.yaml      the fully resolved config (what `resume` rebuilds the run from)
    manifest.json    versions, seed, command line, config hash, start time
    ckpt/last.pt     the latest checkpoint (atomic)
    previews/        image grids written during training
    final/           model.glb (and .obj / .ply on request); turntable.mp4, .gif, thumbnail.png
    metrics.jsonl    training log; metrics.json: evaluation results
    report.html      the run report (opens from disk; report_files/ holds its viewer script)
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dreamengine.config import RunConfig, config_hash, config_to_yaml, load_config
from dreamengine.core.files import atomic_write, write_json
from dreamengine.errors import CheckpointError, DreamEngineError
from dreamengine.version import __version__


def slugify(text: str, max_length: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "run"


def plan_run_dir(cfg: RunConfig) -> Path:
    """A new, unused run directory path ``output_dir/<prompt slug>-<time>`` (not created yet)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{slugify(cfg.prompt)}-{stamp}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    return run_dir


def init_run_dir(run_dir: Path, cfg: RunConfig, argv: list[str], teacher_info: dict[str, Any] | None = None,
                 write_config: bool = True, extra: dict[str, Any] | None = None) -> None:
    """Create ``run_dir`` and write manifest.json (plus ``extra`` entries) and (unless ``write_config`` is False: a
    system run keeps one config per stage) config.yaml into it."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as error:
        raise DreamEngineError(f"cannot create the run directory {run_dir}: {error.strerror}; set "
                               "output_dir=PATH to a writable folder") from None
    if write_config:
        atomic_write(run_dir / "config.yaml", config_to_yaml(cfg))
    write_json(run_dir / "manifest.json", {**manifest(cfg, argv, teacher_info), **(extra or {})})


def manifest(cfg: RunConfig, argv: list[str], teacher_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, seed, command and config hash; ``teacher_info`` is what the loaded teacher reports about
    itself (model, revision, resolved hub commit) when it can."""
    import numpy
    import torch

    return {
        "dreamengine": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "command": argv,
        "prompt": cfg.prompt,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "teacher": {"name": cfg.teacher.name, "model": getattr(cfg.teacher, "model", None),
                    "revision": getattr(cfg.teacher, "revision", None), **(teacher_info or {})},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def open_run_dir(path: str | Path) -> tuple[Path, RunConfig]:
    """Validate an existing run directory and load its config."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist; pass the folder that "
                              "dreamengine generate printed (under runs/ by default)")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a DreamEngine run directory: it has no config.yaml")
    return run_dir, load_config(config_path)


# ------------------------------------------------------------------------------------------ system runs' layout
SYSTEM_FILE = "system.yaml"  # a system run's name, description, paper, prompt and stage list


def is_system_run(run_dir: Path) -> bool:
    return (Path(run_dir) / SYSTEM_FILE).is_file()


def read_system_run(run_dir: Path) -> dict[str, Any]:
    """system.yaml of a system run directory, as a plain dict."""
    path = Path(run_dir) / SYSTEM_FILE
    try:
        return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]
    except Exception as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); it is not a DreamEngine system "
                              "run directory, or the file was damaged") from None


def trained_run_dir(path: str | Path) -> Path:
    """The run directory whose checkpoint holds a run's trained scene: ``path`` itself for a single run, the
    last stage that has a checkpoint for a system run."""
    run_dir = Path(path)
    if not is_system_run(run_dir):
        return run_dir
    stages = [run_dir / stage["dir"] for stage in read_system_run(run_dir)["stages"]]
    started = [folder for folder in stages if (folder / "ckpt" / "last.pt").is_file()]
    if not started:
        raise DreamEngineError(f"no stage of the system run {run_dir} has a checkpoint yet; resume it first")
    return started[-1]
