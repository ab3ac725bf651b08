"""``report.html`` for one run directory: a page that opens from disk, offline, wherever the folder is copied.

It shows what the run directory holds (see :mod:`dreamengine.runs`), each section only when its files
exist: the prompt and settings, the exported GLB in an interactive viewer, the turntable video, the
evaluation metrics, training curves and timings, the preview grids over time, and the resolved config
with the manifest. Everything is embedded (GLB, curves, styles) or referenced by a relative path inside the
run directory (previews, video, the viewer script in ``report_files/``); the page requests nothing from
the network.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dreamengine.core.files import atomic_write
from dreamengine.errors import DreamEngineError
from dreamengine.report import viewer
from dreamengine.report.plots import format_number, loss_curves_html, read_log
from dreamengine.report.turntable import GIF_NAME, MP4_NAME, THUMBNAIL_NAME
from dreamengine.version import __version__

REPORT_NAME = "report.html"
PREVIEW_PATTERN = re.compile(r"step-(\d+)\.png$")
SCENE_NAMES = {"nerf": "NeRF", "gaussians": "Gaussians", "mesh": "mesh"}

# metrics.json keys (flattened with dots) -> (label, hint); other numbers are shown under their key
METRIC_LABELS = {
    "mask_iou": ("Mask IoU", "held-out views, 1 is perfect"),
    "psnr": ("PSNR", "dB on held-out views"),
    "saturation": ("Saturation", "foreground; ground truth {true_saturation}"),
    "janus_score": ("Janus score", "0 consistent back, 1 front on the back"),
    "texture_noise": ("Texture noise", "high-frequency color inside the object; ground truth {true_texture_noise}"),
    "mesh.volumetric_iou": ("Mesh volumetric IoU", "exported mesh vs true shape"),
    "mesh.chamfer": ("Chamfer distance", "scene units, lower is better"),
    "mesh.euler_characteristic": ("Mesh Euler characteristic", "true shape {mesh.true_euler_characteristic}"),
}
COLUMN_LABELS = {"azimuth": "azimuth (°)", "elevation": "elevation (°)", "mask_iou": "mask IoU",
                 "psnr": "PSNR (dB)"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def url(relative: str) -> str:
    """A relative URL for a path inside the run directory (forward slashes, percent-encoded)."""
    return quote(relative.replace("\\", "/"))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_yaml(path: Path) -> dict[str, Any]:
    """The config as plain data, without schema validation (the report must open runs of older versions)."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # a broken config must not stop the report; the raw text is still shown
        return {}
    return data if isinstance(data, dict) else {}


def config_name(command: list[str]) -> str:
    """The ``--config`` of the recorded command line (the command's default when it had none: ``quickstart`` for
    ``generate``, ``refine-toy`` for ``refine``)."""
    for index, arg in enumerate(command):
        if arg in ("--config", "-c") and index + 1 < len(command):
            return Path(command[index + 1]).name
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]).name
    defaults = {"generate": "quickstart", "refine": "refine-toy"}
    return next((defaults[arg] for arg in command if arg in defaults), "unknown")


def system_label(config: dict[str, Any]) -> str:
    """E.g. 'SDS · NeRF · toyworld teacher' from the resolved config."""
    def name(section: str) -> str:
        value = config.get(section)
        return str(value.get("name", "?")) if isinstance(value, dict) else "?"

    teacher = config.get("teacher") if isinstance(config.get("teacher"), dict) else {}
    teacher_label = teacher.get("model") or name("teacher")
    scene = name("scene")
    return f"{name('guidance').upper()} · {SCENE_NAMES.get(scene, scene)} · {teacher_label} teacher"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def previews(run_dir: Path) -> list[tuple[int, str]]:
    """(step, relative path) of the preview grids, by step."""
    found = []
    for path in (run_dir / "previews").glob("step-*.png"):
        match = PREVIEW_PATTERN.search(path.name)
        if match:
            found.append((int(match.group(1)), f"previews/{path.name}"))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- sections
def header_html(run_dir: Path, manifest: dict[str, Any], config: dict[str, Any], last_step: int | None) -> str:
    prompt = manifest.get("prompt") or config.get("prompt") or "(no prompt recorded)"
    max_steps = (config.get("trainer") or {}).get("max_steps")
    steps = f"{last_step if last_step is not None else '?'} / {max_steps if max_steps is not None else '?'}"
    facts = [("Config", config_name(manifest.get("command") or [])), ("System", system_label(config)),
             ("Seed", manifest.get("seed", config.get("seed", "?"))), ("Steps", steps),
             ("Started", format_time(manifest.get("created"))), ("Run", run_dir.resolve().name)]
    chips = "".join(f'<div class="fact"><span>{esc(k)}</span><b>{esc(v)}</b></div>' for k, v in facts)
    return (f'<header><p class="kicker">DreamEngine run report</p><h1>{esc(prompt)}</h1>'
            f'<div class="facts">{chips}</div></header>')


def format_time(stamp: Any) -> str:
    """'2026-11-28T00:57:28+0000' -> '2026-11-28 00:57 +0000' (other values as they are)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d):\d\d([+-]\d{4})?", str(stamp))
    if not match:
        return "?" if stamp is None else str(stamp)
    return f"{match.group(1)} {match.group(2)}" + (f" {match.group(3)}" if match.group(3) else "")


def downloads_html(run_dir: Path) -> str:
    final = run_dir / "final"
    files = [p for p in sorted(final.glob("*")) if p.is_file() and p.name != THUMBNAIL_NAME] if final.is_dir() else []
    files += [run_dir / name for name in ("config.yaml", "metrics.json", "metrics.jsonl") if (run_dir / name).is_file()]
    links = "".join(f'<a class="file" href="{url(p.relative_to(run_dir).as_posix())}" download>{esc(p.name)}'
                    f'<small>{format_size(p.stat().st_size)}</small></a>' for p in files)
    return f'<div class="files">{links}</div>' if links else ""


def format_size(size: int) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def model_html(run_dir: Path, prompt: str) -> tuple[str, bool]:
    """The viewer card (and whether it holds a model-viewer)."""
    glb = run_dir / "final" / "model.glb"
    if not glb.is_file():
        return ('<div class="empty">No exported model: this run has no final/model.glb '
                "(run <code>dreamengine export RUN_DIR</code> to write it).</div>", False)
    return viewer.viewer_html(glb, f"3D model generated for: {prompt}"), True


def turntable_html(run_dir: Path) -> str:
    final = run_dir / "final"
    gif = f"final/{GIF_NAME}"
    if (final / MP4_NAME).is_file():
        poster = f' poster="{url("final/" + THUMBNAIL_NAME)}"' if (final / THUMBNAIL_NAME).is_file() else ""
        fallback = (f"this.parentNode.outerHTML='<img class=&quot;turntable&quot; src=&quot;{url(gif)}&quot; "
                    f"alt=&quot;turntable&quot;>'") if (final / GIF_NAME).is_file() else ""
        return (f'<video id="turntable" class="turntable" autoplay loop muted playsinline controls{poster}>'
                f'<source src="{url("final/" + MP4_NAME)}" type="video/mp4" onerror="{fallback}"></video>'
                + TURNTABLE_NOTE)
    if (final / GIF_NAME).is_file():
        return f'<img class="turntable" src="{url(gif)}" alt="turntable of the trained scene">' + TURNTABLE_NOTE
    return ('<div class="empty">No turntable yet: <code>dreamengine report RUN_DIR</code> renders one from the '
            "last checkpoint.</div>")


TURNTABLE_NOTE = ('<p class="muted">Renders of the trained scene (not the mesh) from the last checkpoint, one turn '
                  "at 15° elevation starting at the front, like the viewer's first view.</p>")


def metrics_html(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ('<p class="muted">No evaluation: <code>metrics.json</code> is written for toy-world runs '
                "(<code>dreamengine eval RUN_DIR</code>).</p>")
    flat = flatten({k: v for k, v in metrics.items() if not isinstance(v, list) and k != "bands"})
    used = {"true_saturation", "true_texture_noise", "views", "resolution"}
    used |= {key for key in flat if key.startswith("mesh.true_")}
    cards = []
    for key, (label, hint) in METRIC_LABELS.items():
        if is_number(flat.get(key)):
            references = re.findall(r"\{([^}]+)\}", hint)  # e.g. {true_saturation}: another metric's value
            for reference in references:
                value = flat.get(reference)
                hint = hint.replace(f"{{{reference}}}", format_number(float(value)) if is_number(value) else "?")
            cards.append((label, flat[key], hint))
            used.add(key)
    cards += [(key, value, "") for key, value in flat.items() if key not in used and is_number(value)]
    body = "".join(f'<div class="metric"><span>{esc(label)}</span><b>{format_number(float(value))}</b>'
                   f'<small>{esc(hint)}</small></div>' for label, value, hint in cards)
    out = f'<div class="metrics">{body}</div>'
    if "views" in metrics:
        out += (f'<p class="muted">{esc(metrics["views"])} held-out views at {esc(metrics.get("resolution", "?"))} '
                f'px against the toy world\'s ground truth for “{esc(metrics.get("object", "?"))}”.</p>')
    mesh = metrics.get("mesh", {})
    if isinstance(mesh, dict) and "watertight" in mesh:
        out += (f'<p class="muted">Exported mesh: {"watertight" if mesh["watertight"] else "not watertight"}, '
                f'{esc(mesh.get("pieces", "?"))} piece(s), Euler characteristic '
                f'{esc(mesh.get("euler_characteristic", "?"))} (true shape: '
                f'{esc(mesh.get("true_euler_characteristic", "?"))}).</p>')
    if isinstance(metrics.get("bands"), dict):
        out += table_html("elevation bands", [{"elevation": band, **values}
                                              for band, values in metrics["bands"].items()])
    for key, rows in metrics.items():
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            out += table_html(key.replace("_", " "), rows)
    return out


def table_html(caption: str, rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{esc(COLUMN_LABELS.get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td>{format_number(float(row[c])) if is_number(row.get(c)) else esc(row.get(c, ''))}</td>"
        for c in columns) + "</tr>" for row in rows)
    return (f'<details class="table"><summary>{esc(caption)} ({len(rows)})</summary>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")


def timings_html(timings: dict[str, Any] | None) -> str:
    if not timings:
        return ""
    stages = {k: v for k, v in timings.items() if is_number(v) and k not in ("steps_timed", "fit_seconds")}
    if not stages:
        return ""
    cells = "".join(f'<div class="metric small"><span>{esc(k)}</span><b>{v * 1000:.1f} ms</b></div>'
                    for k, v in stages.items())
    steps = timings.get("steps_timed")
    note = f" over {steps} steps" if is_number(steps) else ""
    extra = ""
    if is_number(timings.get("fit_seconds")):
        extra += f"Training took {timings['fit_seconds']:.1f} s. "
    parallel = timings.get("parallel")
    if isinstance(parallel, dict) and is_number(parallel.get("evaluations_per_step")):
        extra += (f"trainer.parallel: {parallel.get('picard_steps')} steps in {parallel.get('picard_iterations')} "
                  f"Picard iterations, {parallel['evaluations_per_step']:.2f} gradient evaluations per step.")
    return (f'<h3>Median time per step{esc(note)}</h3><div class="metrics">{cells}</div>'
            f'<p class="muted">guidance includes teacher. {esc(extra)}</p>')


def previews_html(run_dir: Path) -> str:
    found = previews(run_dir)
    if not found:
        return ('<p class="muted">No preview grids (<code>trainer.preview_every</code> was 0 or the run stopped '
                "before the first one).</p>")
    last_step, last_path = found[-1]
    steps = json.dumps([s for s, _ in found])
    paths = json.dumps([url(p) for _, p in found])
    strip = "".join(f'<figure><img src="{url(p)}" alt="preview at step {s}" loading="lazy">'
                    f"<figcaption>step {s}</figcaption></figure>" for s, p in found)
    return (f'<div class="scrub"><input id="preview-slider" type="range" min="0" max="{len(found) - 1}" '
            f'value="{len(found) - 1}" aria-label="training step"><output id="preview-step">step {last_step}'
            f'</output></div><img id="preview-image" class="preview" src="{url(last_path)}" '
            f'alt="preview grid at step {last_step}"><p class="muted">Top row: renders from four orbit views; '
            'bottom row: their opacity.</p>'
            f'<details><summary>All {len(found)} grids</summary><div class="strip">{strip}</div></details>'
            f"<script>(function(){{var steps={steps},paths={paths};"
            "var s=document.getElementById('preview-slider'),o=document.getElementById('preview-step'),"
            "im=document.getElementById('preview-image');s.addEventListener('input',function(){"
            "im.src=paths[s.value];im.alt='preview grid at step '+steps[s.value];"
            "o.textContent='step '+steps[s.value];});})();</script>")


def provenance_html(run_dir: Path, manifest: dict[str, Any]) -> str:
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    out = ""
    if config_text:
        out += f'<details><summary>Resolved config (config.yaml)</summary><pre>{esc(config_text)}</pre></details>'
    if manifest:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(format_value(v))}</td></tr>" for k, v in
                       flatten(manifest).items())
        out += ('<details><summary>Manifest (versions, command line)</summary>'
                f'<table class="kv">{rows}</table></details>')
    return out


def format_value(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "—" if value is None else str(value)


# ------------------------------------------------------------------------------------------------ page
INPUT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def input_image(run_dir: Path, config: dict[str, Any]) -> str | None:
    """The relative URL of the run's reference image (image-to-3D): its copy in ``input/``, or for a system
    stage the file its config reads (``image.path``); None for text-only runs."""
    folder = run_dir / "input"
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_IMAGE_SUFFIXES)
        if found:
            return url(f"input/{found[0].name}")
    path = (config.get("image") or {}).get("path")
    if path and Path(path).is_file():
        return url(os.path.relpath(Path(path).resolve(), run_dir.resolve()))
    return None


def input_html(run_dir: Path, config: dict[str, Any]) -> str:
    """A card with the reference image, shown beside the result; '' without one."""
    image = input_image(run_dir, config)
    if image is None:
        return ""
    seen = (config.get("image") or {})
    where = ""
    if seen.get("elevation_deg") is not None:
        where = (f" seen from elevation {format_number(seen['elevation_deg'])}°, azimuth "
                 f"{format_number(seen.get('azimuth_deg') or 0)}°")
    shows = f"; it shows {esc(seen['object'])}" if seen.get("object") else ""
    return (f'<div class="card"><h2>Input image</h2><img class="turntable" src="{image}" alt="the reference image">'
            f'<p class="muted">The reference image (a copy; the original is never modified){esc(where)}{shows}.</p>'
            "</div>")


def stages_html(run_dir: Path) -> str:
    """For a system run (system.yaml): one row per stage with a link to its own report; else ''."""
    system = read_yaml(run_dir / "system.yaml") if (run_dir / "system.yaml").is_file() else {}
    if not system.get("stages"):
        return ""
    summary = {row.get("stage"): row for row in (read_json(run_dir / "metrics.json") or {}).get("stages", [])}
    rows = []
    for stage in system["stages"]:
        folder = str(stage.get("dir", ""))
        report = '<span class="muted">not run yet</span>'
        if (run_dir / folder / REPORT_NAME).is_file():
            report = f'<a href="{url(folder + "/" + REPORT_NAME)}">report</a>'
        done = summary.get(stage.get("name"), {})
        iou = format_number(done["mask_iou"]) if "mask_iou" in done else "-"
        rows.append(f"<tr><td>{esc(stage.get('name'))}</td><td>{esc(stage.get('scene'))} + "
                    f"{esc(stage.get('guidance'))}</td><td>{esc(stage.get('steps'))}</td><td>{iou}</td>"
                    f"<td>{report}</td></tr>")
    return (f'<section class="card"><h2>Stages of {esc(system.get("system"))}</h2>'
            f'<p class="muted">{esc(system.get("description", ""))} · {esc(system.get("paper", ""))}</p>'
            "<table><thead><tr><th>stage</th><th>scene + guidance</th><th>steps</th><th>mask IoU</th><th></th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def hero_html(run_dir: Path, config: dict[str, Any], model: str) -> str:
    """The model (3D viewer, downloads) and the turntable; an image-to-3D run shows its input image beside the
    turntable, and the model below."""
    model_card = f'<div class="card"><h2>Model</h2>{model}{downloads_html(run_dir)}</div>'
    turntable_card = f'<div class="card"><h2>Turntable</h2>{turntable_html(run_dir)}</div>'
    input_card = input_html(run_dir, config)
    if input_card:
        return (f'<section class="hero equal">{input_card}{turntable_card}</section>'
                f'<section class="card"><h2>Model</h2>{model}{downloads_html(run_dir)}</section>')
    return f'<section class="hero">{model_card}{turntable_card}</section>'


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from whatever the run directory holds and return its path.

    Works on finished, stopped or partial runs (sections without their files say so). Raises
    :class:`DreamEngineError` when ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DreamEngineError(f"run directory {run_dir} does not exist; pass the folder that dreamengine generate "
                               "printed (under runs/ by default)")
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "manifest.json").is_file():
        raise DreamEngineError(f"{run_dir} is not a DreamEngine run directory (it has neither config.yaml nor "
                               "manifest.json); pass the folder that dreamengine generate printed")
    manifest = read_json(run_dir / "manifest.json") or {}
    config = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    records = read_log(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    last_step = int(records[-1]["step"]) if records else None
    prompt = str(manifest.get("prompt") or config.get("prompt") or "")

    model, has_viewer = model_html(run_dir, prompt)
    scripts = ""
    if has_viewer:
        scripts = f'<script src="{viewer.install_viewer_script(run_dir)}"></script><script>{viewer.LOADER_JS}</script>'
    curves = loss_curves_html(records) or '<p class="muted">No training log (metrics.jsonl).</p>'
    body = (header_html(run_dir, manifest, config, last_step)
            + hero_html(run_dir, config, model)
            + stages_html(run_dir)
            + f'<section class="card"><h2>Evaluation</h2>{metrics_html(read_json(run_dir / "metrics.json"))}</section>'
            f'<section class="card"><h2>Training</h2>{curves}{timings_html(read_json(run_dir / "timings.json"))}'
            "</section>"
            f'<section class="card"><h2>Previews over training</h2>{previews_html(run_dir)}</section>'
            f'<section class="card"><h2>Settings</h2>{provenance_html(run_dir, manifest)}</section>')
    footer = (f"<footer>Written by DreamEngine {esc(__version__)} on {esc(time.strftime('%Y-%m-%d %H:%M'))}. "
              + (f"3D viewer: &lt;model-viewer&gt; {esc(viewer.bundled_version())} (Apache-2.0, with three.js, "
                 f"MIT; license in {viewer.FILES_DIR}/).</footer>" if has_viewer else "</footer>"))
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(prompt or run_dir.name)} · DreamEngine report</title><style>{STYLE}</style></head>"
            f"<body><main>{body}{footer}</main>{scripts}</body></html>\n")
    path = run_dir / REPORT_NAME
    atomic_write(path, page)
    return path


STYLE = """
:root{--bg:#f5f6f8;--card:#fff;--text:#1b2230;--muted:#667085;--border:#e3e6eb;--accent:#3563e9;--raw:#b8c6f2;
--stage:radial-gradient(circle at 50% 40%,#ffffff 0%,#e9ecf1 75%);--warn:#b54708;--code:#f0f2f5}
@media (prefers-color-scheme:dark){:root{--bg:#0f1217;--card:#171b22;--text:#e6e9ef;--muted:#98a1b0;
--border:#2a303a;--accent:#7ea2ff;--raw:#34426b;--stage:radial-gradient(circle at 50% 40%,#2b313c 0%,#171b22 75%);
--warn:#f5a35c;--code:#1f242d}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 24px 40px}
header{margin-bottom:20px}
.kicker{margin:0;color:var(--accent);font-weight:600;font-size:13px;letter-spacing:.06em;text-transform:uppercase}
h1{margin:4px 0 14px;font-size:30px;line-height:1.2}
h2{margin:0 0 12px;font-size:17px}
h3{margin:18px 0 8px;font-size:14px;color:var(--muted);font-weight:600}
.facts{display:flex;flex-wrap:wrap;gap:8px}
.fact{background:var(--card);border:1px solid var(--border);border-radius:8px;padding:5px 11px;font-size:13px}
.fact span{color:var(--muted);margin-right:6px}
.card{background:var(--card);border:1px solid var(--border);border-radius:12px;padding:18px 20px;margin-bottom:20px}
.hero{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:20px}
.hero.equal{grid-template-columns:minmax(0,1fr) minmax(0,1fr)}
@media (max-width:860px){.hero{grid-template-columns:1fr}}
.viewer-wrap{position:relative}
model-viewer{display:block;width:100%;height:440px;background:var(--stage);border-radius:10px;
--poster-color:transparent}
.viewer-status{position:absolute;left:12px;bottom:12px;right:12px;color:var(--muted);font-size:13px}
.viewer-status.error{color:var(--warn)}
.turntable{display:block;width:100%;max-height:440px;aspect-ratio:1;object-fit:contain;background:var(--stage);
border-radius:10px}
.files{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}
.file{border:1px solid var(--border);border-radius:8px;padding:4px 10px;color:var(--text);text-decoration:none;
font-size:13px}
.file:hover{border-color:var(--accent);color:var(--accent)}
.file small{color:var(--muted);margin-left:6px}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.metric{border:1px solid var(--border);border-radius:10px;padding:10px 12px}
.metric span{display:block;color:var(--muted);font-size:12px}
.metric b{display:block;font-size:22px;font-variant-numeric:tabular-nums}
.metric.small b{font-size:17px}
.metric small{color:var(--muted);font-size:11px}
.muted{color:var(--muted);font-size:13px}
.warn{color:var(--warn)}
.empty{padding:40px 16px;text-align:center;color:var(--muted);background:var(--stage);border-radius:10px}
details{margin-top:12px}
summary{cursor:pointer;color:var(--accent);font-weight:500}
table{border-collapse:collapse;margin-top:8px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 12px;border-bottom:1px solid var(--border);text-align:right}
table.kv th,table.kv td{text-align:left;vertical-align:top}
table.kv th{color:var(--muted);font-weight:500;white-space:nowrap}
pre{background:var(--code);padding:12px 14px;border-radius:8px;overflow:auto;font-size:12.5px;max-height:520px}
code{background:var(--code);padding:1px 5px;border-radius:4px;font-size:.92em}
.curves{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
svg.curve{width:100%;height:auto;border:1px solid var(--border);border-radius:10px}
svg.curve text{fill:var(--muted);font-size:11px;font-family:inherit}
svg.curve .title{fill:var(--text);font-size:13px;font-weight:600}
svg.curve .note{fill:var(--muted);font-weight:400}
svg.curve .grid{stroke:var(--border);stroke-width:1}
svg.curve .axis{stroke:var(--muted);stroke-width:1}
svg.curve .raw{fill:none;stroke:var(--raw);stroke-width:1}
svg.curve .smooth{fill:none;stroke:var(--accent);stroke-width:2}
.scrub{display:flex;align-items:center;gap:14px;margin-bottom:10px}
.scrub input{flex:1;accent-color:var(--accent)}
.scrub output{min-width:90px;font-variant-numeric:tabular-nums;font-weight:600}
img.preview{display:block;width:100%;max-width:720px;image-rendering:pixelated;border-radius:8px;
border:1px solid var(--border)}
.strip{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px;margin-top:10px}
.strip figure{margin:0}.strip img{width:100%;image-rendering:pixelated;border-radius:6px}
figcaption{color:var(--muted);font-size:12px}
footer{color:var(--muted);font-size:12px;margin-top:8px}
"""
