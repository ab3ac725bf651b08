"""``index.html`` for a batch of runs: one card per run with a thumbnail, the prompt, headline metrics and a
link to its ``report.html``. Links are relative, so the batch folder can be copied with its runs."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from dreamengine.core.files import atomic_write
from dreamengine.errors import DreamEngineError
from dreamengine.report.page import REPORT_NAME, STYLE, esc, format_number, is_number, previews, read_json, url
from dreamengine.report.turntable import THUMBNAIL_NAME
from dreamengine.version import __version__

INDEX_NAME = "index.html"
HEADLINE = (("mask_iou", "mask IoU"), ("psnr", "PSNR")), (("volumetric_iou", "mesh IoU"),)

INDEX_STYLE = """
.runs{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:16px;margin-bottom:16px}
.run{display:block;background:var(--card);border:1px solid var(--border);border-radius:12px;overflow:hidden;
color:var(--text);text-decoration:none}
a.run:hover{border-color:var(--accent)}
.run .thumb{display:block;width:100%;aspect-ratio:1;object-fit:contain;background:var(--stage)}
.run .thumb.none{display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:13px}
.run .info{padding:10px 12px}
.run .prompt{font-weight:600;margin:0 0 4px}
.run .nums{color:var(--muted);font-size:12px;font-variant-numeric:tabular-nums}
.run .missing{color:var(--warn);font-size:12px}
"""


def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def thumbnail(run_dir: Path) -> Path | None:
    """The turntable's front view, else the last preview grid, else None."""
    path = run_dir / "final" / THUMBNAIL_NAME
    if path.is_file():
        return path
    found = previews(run_dir)
    return run_dir / found[-1][1] if found else None


def headline(run_dir: Path) -> str:
    metrics = read_json(run_dir / "metrics.json") or {}
    parts = [f"{label} {format_number(float(metrics[key]))}" for key, label in HEADLINE[0]
             if is_number(metrics.get(key))]
    mesh = metrics.get("mesh") if isinstance(metrics.get("mesh"), dict) else {}
    parts += [f"{label} {format_number(float(mesh[key]))}" for key, label in HEADLINE[1] if is_number(mesh.get(key))]
    return " · ".join(parts)


def run_card(run_dir: Path, batch_dir: Path) -> str:
    manifest = read_json(run_dir / "manifest.json") or {}
    prompt = manifest.get("prompt") or run_dir.name
    thumb = thumbnail(run_dir)
    image = (f'<img class="thumb" src="{url(relative(thumb, batch_dir))}" alt="{esc(prompt)}" loading="lazy">'
             if thumb else '<div class="thumb none">no image yet</div>')
    numbers = headline(run_dir)
    info = (f'<div class="info"><p class="prompt">{esc(prompt)}</p>'
            f'<div class="nums">seed {esc(manifest.get("seed", "?"))}{" · " + esc(numbers) if numbers else ""}</div>')
    report = run_dir / REPORT_NAME
    if report.is_file():
        return f'<a class="run" href="{url(relative(report, batch_dir))}">{image}{info}</div></a>'
    return (f'<div class="run">{image}{info}<div class="missing">no report yet: dreamengine report '
            f'{esc(relative(run_dir, batch_dir))}</div></div></div>')


def write_index(batch_dir: str | Path, run_dirs: Sequence[str | Path], title: str | None = None) -> Path:
    """Write ``batch_dir/index.html`` linking every run's report (in the given order) and return its path."""
    batch_dir = Path(batch_dir)
    runs = [Path(r) for r in run_dirs]
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        raise DreamEngineError(f"cannot index runs that do not exist: {', '.join(missing)}; pass run directories "
                               "(each holds a config.yaml)")
    batch_dir.mkdir(parents=True, exist_ok=True)
    title = title or f"{batch_dir.resolve().name}: {len(runs)} runs"
    cards = "".join(run_card(r, batch_dir) for r in runs)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · DreamEngine</title><style>{STYLE}{INDEX_STYLE}</style></head><body><main>"
            f'<header><p class="kicker">DreamEngine batch</p><h1>{esc(title)}</h1></header>'
            f'<div class="runs">{cards}</div>'
            f"<footer>Written by DreamEngine {esc(__version__)} on {esc(time.strftime('%Y-%m-%d %H:%M'))}."
            "</footer></main></body></html>\n")
    path = batch_dir / INDEX_NAME
    atomic_write(path, page)
    return path
