"""Values that change with the training step (threestudio's ``C()``), validated at config load.

A schedule is written in a config as either

* a number: constant, e.g. ``0.98``;
* ``[start_value, end_value, end_step]``: linear from step 0 to ``end_step``, then constant;
* ``[start_step, start_value, end_value, end_step]``: ``start_value`` until ``start_step``, linear to
  ``end_value`` at ``end_step``, constant after. ``[5000, 0.98, 0.5, 5001]`` means "0.98 until step 5000,
  then 0.5" (ProlificDreamer's timestep range).

Steps are global optimization steps (integers).
"""

from __future__ import annotations

from typing import Any

from dreamengine.errors import ConfigError

Schedule = Any  # float | list[float]: kept as Any so OmegaConf accepts both forms; checked by validate_schedule


def validate_schedule(spec: Any, key: str, allow_none: bool = False) -> None:
    """Raise ConfigError naming ``key`` if ``spec`` is not a valid schedule."""
    if spec is None and allow_none:
        return
    if isinstance(spec, bool) or spec is None:
        raise ConfigError(f"{key} must be a number or a schedule list, got {spec!r}")
    if isinstance(spec, (int, float)):
        return
    values = list(spec) if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") else None
    if values is None or len(values) not in (3, 4) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"{key} must be a number, [start_value, end_value, end_step] or "
            f"[start_step, start_value, end_value, end_step]; got {spec!r}")
    start_step, end_step = (0, values[2]) if len(values) == 3 else (values[0], values[3])
    if end_step < start_step:
        raise ConfigError(f"{key}: end_step ({end_step}) must not be before start_step ({start_step})")


def schedule_value(spec: Any, step: int) -> float:
    """The value of schedule ``spec`` at global ``step``."""
    if isinstance(spec, (int, float)):
        return float(spec)
    values = [float(v) for v in spec]
    if len(values) == 3:
        values = [0.0, *values]
    start_step, start_value, end_value, end_step = values
    if step <= start_step or end_step <= start_step:
        return start_value if step <= start_step else end_value
    fraction = min((step - start_step) / (end_step - start_step), 1.0)
    return start_value + fraction * (end_value - start_value)


def schedule_max(spec: Any) -> float:
    """The largest value schedule ``spec`` takes (a piecewise-linear schedule peaks at one of its ends)."""
    return max(schedule_value(spec, 0), schedule_value(spec, 2**62))
