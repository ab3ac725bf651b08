"""Training curves from ``metrics.jsonl`` as inline SVG (no plotting dependency, nothing to fetch).

One small panel per logged term (``loss`` first), x = step. The raw values are a thin line, an
exponential moving average over about 1/20 of the run (at least 3 points) a thick one, and a panel
switches to a log y axis when its values are positive and span more than two decades (SDS losses do).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 360, 200
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 12, 26, 30
IGNORED_KEYS = {"step", "skipped"}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file; unreadable lines (a run killed mid-write) are skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def series(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """term -> (steps, values) over the records, finite numbers only; ``loss`` first, then by name."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key in IGNORED_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                steps, values = out.setdefault(key, ([], []))
                steps.append(float(record["step"]))
                values.append(float(value))
    return dict(sorted(out.items(), key=lambda item: (item[0] != "loss", item[0])))


def ema(values: list[float], span: float) -> list[float]:
    """Exponential moving average with smoothing factor 2 / (span + 1), started at the first value."""
    alpha = 2.0 / (max(span, 1.0) + 1.0)
    smoothed, current = [], values[0]
    for value in values:
        current = alpha * value + (1.0 - alpha) * current
        smoothed.append(current)
    return smoothed


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        value += step
    return ticks


def format_number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:.4g}"


def panel_svg(name: str, steps: list[float], values: list[float]) -> str:
    """One term's panel as a standalone ``<svg>`` element (scales with its container's width)."""
    log_scale = min(values) > 0 and max(values) / min(values) > 100.0
    transform = math.log10 if log_scale else (lambda v: v)
    ys = [transform(v) for v in values]
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5 * (abs(y_low) or 1.0), y_high + 0.5 * (abs(y_high) or 1.0)
    x_low, x_high = min(steps), max(steps)
    if x_high == x_low:
        x_low, x_high = x_low - 1.0, x_high + 1.0
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(step: float) -> float:
        return MARGIN_LEFT + (step - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return MARGIN_TOP + (1.0 - (y - y_low) / (y_high - y_low)) * plot_h

    def polyline(ys_: list[float], css: str) -> str:
        points = " ".join(f"{px(s):.1f},{py(y):.1f}" for s, y in zip(steps, ys_, strict=True))
        return f'<polyline class="{css}" points="{points}"/>'

    parts = [f'<svg class="curve" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{html.escape(name)} over training steps" xmlns="http://www.w3.org/2000/svg">',
             f'<text class="title" x="{MARGIN_LEFT}" y="16">{html.escape(name)}'
             + (' <tspan class="note">(log scale)</tspan>' if log_scale else "") + "</text>"]
    if log_scale:
        y_ticks = [float(k) for k in range(math.ceil(y_low), math.floor(y_high) + 1)]
        labels = [format_number(10.0 ** k) for k in y_ticks]
    else:
        y_ticks = nice_ticks(y_low, y_high)
        labels = [format_number(v) for v in y_ticks]
    for y, label in zip(y_ticks, labels, strict=True):
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{py(y):.1f}" '
                     f'y2="{py(y):.1f}"/><text class="tick" x="{MARGIN_LEFT - 6}" y="{py(y) + 4:.1f}" '
                     f'text-anchor="end">{label}</text>')
    for step in nice_ticks(x_low, x_high):
        parts.append(f'<text class="tick" x="{px(step):.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" '
                     f'text-anchor="middle">{format_number(step)}</text>')
    parts.append(f'<line class="axis" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{MARGIN_TOP + plot_h}" '
                 f'y2="{MARGIN_TOP + plot_h}"/>')
    parts.append(polyline(ys, "raw"))
    if len(values) > 2:
        parts.append(polyline([transform(v) for v in ema(values, max(3.0, len(values) / 20.0))], "smooth"))
    last = values[-1]
    parts.append(f'<text class="last" x="{WIDTH - MARGIN_RIGHT}" y="16" text-anchor="end">last '
                 f'{format_number(last)} @ {format_number(steps[-1])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def loss_curves_html(records: list[dict[str, Any]]) -> str:
    """A grid of SVG panels, one per logged term; empty string when nothing numeric was logged."""
    panels = [panel_svg(name, steps, values) for name, (steps, values) in series(records).items()]
    skipped = sum(1 for record in records if record.get("skipped"))
    note = (f'<p class="warn">{skipped} logged step(s) were skipped for a non-finite loss or gradient.</p>'
            if skipped else "")
    if not panels:
        return ""
    return note + '<div class="curves">' + "".join(panels) + "</div>"
