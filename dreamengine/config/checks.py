"""Range checks of every numeric setting, run when a config is loaded (after the dataclasses' own checks).

Two rules hold everywhere: every number is finite (NaN and infinity are refused, inside lists and schedules
too), and every ``*_range`` pair is ordered. The table :data:`RULES` adds each key's range: counts are
positive, learning rates and weights non-negative, probabilities and fractions in [0, 1]. A key matches the
first rule whose pattern (``fnmatch``, on the dotted key) fits it; keys matched by none only need to be finite.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from typing import Any

from dreamengine.errors import ConfigError

Check = Callable[[float], bool]


def at_least(low: float) -> tuple[Check, str]:
    return (lambda value: value >= low), f">= {low:g}"


def above(low: float) -> tuple[Check, str]:
    return (lambda value: value > low), f"> {low:g}"


def within(low: float, high: float) -> tuple[Check, str]:
    return (lambda value: low <= value <= high), f"in [{low:g}, {high:g}]"


ANY: tuple[Check, str] = ((lambda value: True), "")

# (pattern of dotted keys, (check, description)); the first match decides. Values inside lists are checked one by
# one (a schedule [start_step, start_value, end_value, end_step] is checked on its values, see SCHEDULE_VALUES).
RULES: list[tuple[str, tuple[Check, str]]] = [
    ("seed", ANY),
    ("*.seed", ANY),
    ("camera.elevation_range", within(-90.0, 90.0)),
    ("camera.azimuth_range", ANY),
    ("camera.distance_range", above(0.0)),
    ("camera.fovy_range", within(1.0, 179.0)),
    ("camera.*", at_least(1)),  # sizes and batch sizes, also in phases (start is checked by CameraConfig)
    ("prompt_processor.*_threshold", within(0.0, 180.0)),
    ("prompt_processor.perp_neg_f_*", ANY),
    ("teacher.elevations", within(-90.0, 90.0)),
    ("teacher.azimuth_step", within(0.0, 360.0)),
    ("teacher.resolution", at_least(2)),
    ("teacher.*_sigma*", above(0.0)),
    ("guidance.*_step_percent", within(0.0, 1.0)),
    ("guidance.camera_dropout", within(0.0, 1.0)),
    ("guidance.*_scale", ANY),  # CFG and method scales: any finite number (CSD's are signed)
    ("guidance.guidance_perp_neg", ANY),  # ASD: signed (source -0.5)
    ("guidance.grad_clip", above(0.0)),
    ("guidance.lora_*", above(0.0)),
    ("guidance.*_lr", above(0.0)),
    ("guidance.*", at_least(0.0)),
    ("scene.density_blob_scale", ANY),
    ("scene.init_color", within(0.0, 1.0)),
    ("scene.lr_*", above(0.0)),
    ("scene.init_opacity", within(0.0, 1.0)),
    ("scene.*", at_least(0.0)),
    ("render.background_color", within(0.0, 1.0)),
    ("render.random_background_prob", within(0.0, 1.0)),
    ("render.occupancy_threshold", at_least(0.0)),
    ("render.albedo_warmup_steps", at_least(0)),  # 0: no warm-up
    ("render.*", at_least(1)),
    ("optim.betas", within(0.0, 0.999999)),
    ("optim.eps", above(0.0)),
    ("optim.*", at_least(0.0)),
    ("loss.*", at_least(0.0)),
    ("densify.grow_*", at_least(0.0)),
    ("densify.prune_*", at_least(0.0)),
    ("densify.*", at_least(0)),
    ("trainer.max_steps", at_least(1)),
    ("trainer.n_particles", at_least(1)),
    ("trainer.log_every", at_least(1)),
    ("trainer.max_bad_steps", at_least(1)),
    ("trainer.*", at_least(0)),  # preview_every / checkpoint_every: 0 means never
    ("export.threshold", above(0.0)),
    ("export.min_component_fraction", within(0.0, 1.0)),
    ("export.resolution", at_least(8)),
    ("export.*", at_least(0.0)),
    ("eval.elevations", within(-89.9, 89.9)),
    ("eval.*", at_least(1)),
    ("report.*", at_least(0)),
    ("logging.tensorboard_flush_seconds", above(0.0)),
    ("image.lambda_*", at_least(0.0)),
    ("image.*", ANY),  # elevation, azimuth (checked by ImageConfig)
    ("text_prior.*_step_percent", within(0.0, 1.0)),
    ("text_prior.weight", at_least(0.0)),
    ("text_prior.*", ANY),
]
# schedule keys ([start_step, start_value, end_value, end_step] or [start_value, end_value, end_step]): only the
# values get the key's range; the steps must be >= 0
SCHEDULE_KEYS = ("guidance.*_step_percent", "guidance.grad_clip", "guidance.*_scale", "loss.*", "image.lambda_*",
                "text_prior.*")


def settings(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config dataclass tree (lists of dataclasses are walked too)."""
    for item in dataclasses.fields(node):
        value = getattr(node, item.name)
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            yield from settings(value, key + ".")
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for element in value:
                yield from settings(element, key + ".")
        else:
            yield key, value


def numbers(value: Any) -> list[float]:
    """The numbers in a value (itself, or the elements of a list); booleans and strings are not numbers."""
    items = value if isinstance(value, list | tuple) else [value]
    return [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def schedule_values(value: Any) -> tuple[list[float], list[float]]:
    """(values, steps) of a schedule setting: a number is one value; a 3- or 4-element list has 2 values."""
    found = numbers(value)
    if len(found) == 4:
        return found[1:3], [found[0], found[3]]
    if len(found) == 3:
        return found[:2], [found[2]]
    return found, []


def check_ranges(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first setting outside its range (see the module docstring)."""
    for key, value in settings(cfg):
        found = numbers(value)
        bad = [v for v in found if not math.isfinite(v)]
        if bad:
            raise ConfigError(f"{key} must be a finite number, got {value!r}; NaN and infinity are not settings")
        if key.endswith("_range") and len(found) == 2 and found[0] > found[1]:
            raise ConfigError(f"{key} must be [low, high] with low <= high, got {value!r}")
        rule = next((rule for pattern, rule in RULES if fnmatch(key, pattern)), ANY)
        check, description = rule
        values, steps = (schedule_values(value) if any(fnmatch(key, p) for p in SCHEDULE_KEYS) else (found, []))
        if any(step < 0 for step in steps):
            raise ConfigError(f"{key}: the steps of a schedule must be >= 0, got {value!r}")
        outside = [v for v in values if not check(v)]
        if outside:
            raise ConfigError(f"{key} must be {description}, got {value!r}")


def check_view_groups(cfg: Any) -> None:
    """A multi-view teacher (``teacher.views_per_group = n > 1``) scores whole groups of n views: the cameras must be
    drawn in groups of n (``camera.views_per_group``; the batch sizes are multiples of it, see ``CameraConfig``)."""
    group = int(getattr(cfg.teacher, "views_per_group", 1) or 1)
    if group > 1 and cfg.camera.views_per_group != group:
        raise ConfigError(f"teacher.name={cfg.teacher.name} denoises groups of {group} views: set "
                          f"camera.views_per_group={group} and camera.batch_size to a multiple of {group} (got "
                          f"camera.views_per_group={cfg.camera.views_per_group}, camera.batch_size="
                          f"{cfg.camera.batch_size})")


__all__ = ["RULES", "check_ranges", "check_view_groups", "settings"]
