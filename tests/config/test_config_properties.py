"""Property tests: whatever value lands in whatever config key, loading gives a valid config or a ConfigError."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamengine.config import GUIDANCE_CONFIGS, SCENE_CONFIGS, TEACHER_CONFIGS, load_config
from dreamengine.config.checks import settings as config_settings
from dreamengine.errors import ConfigError


def choice_overrides(section: str, name: str, registry: dict) -> tuple[str, ...]:
    """The overrides that choose ``name`` for ``section``; a multi-view teacher also needs whole view groups."""
    views = getattr(registry[name](), "views_per_group", 1) if section == "teacher" else 1
    groups = (f"camera.views_per_group={views}", f"camera.batch_size={views}") if views > 1 else ()
    return (f"{section}.name={name}", *groups)


def every_key() -> list[tuple[tuple[str, ...], str]]:
    """(section choice overrides, dotted key) for every key of every guidance, scene and teacher choice."""
    keys: list[tuple[tuple[str, ...], str]] = [((), key) for key, _ in config_settings(load_config("quickstart"))]
    for section, registry in (("guidance", GUIDANCE_CONFIGS), ("scene", SCENE_CONFIGS), ("teacher", TEACHER_CONFIGS)):
        for name in registry:
            choice = choice_overrides(section, name, registry)
            chosen = load_config("quickstart", list(choice))
            keys += [(choice, key) for key, _ in config_settings(chosen)
                     if key.startswith(section + ".") and key != f"{section}.name"]
    return keys


KEYS = every_key()

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True, width=32))
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
values = st.one_of(numbers, st.booleans(), st.none(), texts, st.lists(numbers, max_size=5),
                   st.lists(texts, max_size=3), st.sampled_from(["[1, 2", "{a: 1}", "${oc.env:HOME}", "- x"]))


def as_override(value: object) -> str:
    """How a user would type the value after ``key=`` (YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return str(value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), values)
def test_any_value_in_any_key_loads_or_says_why(choice: tuple[tuple[str, ...], str], value: object) -> None:
    section_choice, key = choice
    overrides = [*section_choice, f"{key}={as_override(value)}"]
    try:
        cfg = load_config("quickstart", overrides, prompt="a red cube")
    except ConfigError as error:
        assert str(error)  # a message for the user, never an empty one
        return
    for name, setting in config_settings(cfg):  # what loads is usable: every number finite
        for number in setting if isinstance(setting, list) else [setting]:
            if isinstance(number, float):
                assert math.isfinite(number), (name, setting)
