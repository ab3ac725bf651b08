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

import json
import platform
import re
import time
from pathlib import Path
from typing import Any

from dreamengine import __version__
from dreamengine.config import RunConfig, config_hash, config_to_yaml, load_config
from dreamengine.errors import CheckpointError, DreamEngineError


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
                 write_config: bool = True) -> None:
    """Create ``run_dir`` and write manifest.json and (unless ``write_config`` is False: a system run keeps one
    config per stage) config.yaml into it."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as error:
        raise DreamEngineError(f"cannot create the run directory {run_dir}: {error.strerror}; set "
                               "output_dir=PATH to a writable folder") from None
    if write_config:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    write_json(run_dir / "manifest.json", manifest(cfg, argv, teacher_info))


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


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


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
