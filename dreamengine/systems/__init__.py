"""Systems: a paper's pipeline as data, an ordered list of stages that one driver runs (``driver.py``).

A system is a YAML file (the packaged ones live next to this module; ``dreamengine systems`` lists them)::

    name: dreamgaussian-toy
    description: Gaussians + SDS for a few hundred steps, then the mesh's texture refined
    paper: "DreamGaussian: Generative Gaussian Splatting for Efficient 3D Content Creation (Tang et al., 2024)"
    stages:
      - name: gaussians
        config: gaussian-toy            # a packaged config name or a YAML path: the stage's base settings
        overrides:                      # any RunConfig keys, as nested YAML
          trainer: {max_steps: 400}
      - name: texture
        config: refine-toy
        init: previous                  # the stage's scene starts from the previous stage's output
        overrides: {trainer: {max_steps: 200}}

Each stage becomes a full :class:`~dreamengine.config.RunConfig`: its base config, then its ``overrides``,
then the user's ``key=value`` overrides (which apply to every stage; ``STAGE:key=value`` to one stage), then
the prompt and, with ``init: previous``, the scene initialization from the previous stage's run directory
(:func:`init_from_previous`). Stages are validated before anything runs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dreamengine.config import RunConfig, find_config, load_config
from dreamengine.errors import ConfigError

SYSTEM_KEYS = {"name", "description", "paper", "stages"}
STAGE_KEYS = {"name", "config", "overrides", "init"}
STAGE_INITS = ("fresh", "previous")


@dataclass
class StageSpec:
    """One stage of a system, as written in its YAML."""

    name: str
    config: str  # base config: a packaged config name or a YAML path
    overrides: list[str] = field(default_factory=list)  # dotlist key=value, from the YAML's nested mapping
    init: str = "fresh"  # fresh | previous


@dataclass
class SystemSpec:
    name: str
    description: str
    paper: str
    stages: list[StageSpec]
    source: str = ""  # where it was read from


def packaged_systems() -> dict[str, Path]:
    """Name -> YAML path of every system shipped with the package."""
    folder = resources.files("dreamengine") / "systems"
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def find_system(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged system (``dreamfusion-toy``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    systems = packaged_systems()
    if name_or_path in systems:
        return systems[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(systems), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"system '{name_or_path}' is neither a file nor a packaged system.{hint} Packaged systems: "
                      f"{', '.join(sorted(systems))} (dreamengine systems describes them).")


def to_dotlist(mapping: Any, prefix: str = "") -> list[str]:
    """A nested mapping as ``key=value`` overrides (lists and scalars as YAML flow values)."""
    items = []
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, DictConfig | dict):
            items += to_dotlist(value, full)
        else:
            plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            items.append(f"{full}={'null' if plain is None else _flow(plain)}")
    return items


def _flow(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def load_system(name_or_path: str) -> SystemSpec:
    """Read and check a system YAML (keys, stage names, inits); the stage configs are checked by
    :func:`stage_configs`."""
    path = find_system(name_or_path)
    try:
        raw = OmegaConf.load(path)
    except Exception as error:
        raise ConfigError(f"could not read system file {path}: {error}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"system file {path} must hold a mapping with keys {', '.join(sorted(SYSTEM_KEYS))}")
    _check_keys(set(raw.keys()), SYSTEM_KEYS, f"system file {path}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, ListConfig) or len(stages_raw) == 0:
        raise ConfigError(f"system file {path} needs a non-empty list 'stages'")
    stages = []
    for index, stage in enumerate(stages_raw):
        where = f"stage {index + 1} of system file {path}"
        if not isinstance(stage, DictConfig) or "name" not in stage or "config" not in stage:
            raise ConfigError(f"{where} must be a mapping with at least 'name' and 'config'")
        _check_keys(set(stage.keys()), STAGE_KEYS, where)
        init = str(stage.get("init", "fresh"))
        if init not in STAGE_INITS:
            raise ConfigError(f"{where}: init must be one of {', '.join(STAGE_INITS)}, got {init!r}")
        if init == "previous" and index == 0:
            raise ConfigError(f"{where}: the first stage has no previous stage to start from (init: previous)")
        overrides = to_dotlist(stage.get("overrides") or {})
        stages.append(StageSpec(str(stage.name), str(stage.config), overrides, init))
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names) or any(not n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise ConfigError(f"system file {path}: stage names must be unique words (letters, digits, - and _), "
                          f"got {names}")
    return SystemSpec(str(raw.get("name", path.stem)), str(raw.get("description", "")), str(raw.get("paper", "")),
                      stages, str(path))


def _check_keys(keys: set[str], allowed: set[str], where: str) -> None:
    for key in sorted(keys - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown key '{key}' in {where}.{hint} Valid keys: {', '.join(sorted(allowed))}.")


def split_stage_overrides(spec: SystemSpec, overrides: list[str]) -> dict[str, list[str]]:
    """The user's overrides for each stage: ``key=value`` goes to every stage, ``STAGE:key=value`` to one."""
    names = [stage.name for stage in spec.stages]
    per_stage: dict[str, list[str]] = {name: [] for name in names}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in per_stage:
                close = difflib.get_close_matches(head, names, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"override '{item}' names stage '{head}', which system {spec.name} does not "
                                  f"have.{hint} Its stages: {', '.join(names)}.")
            per_stage[head].append(rest)
        else:
            for name in names:
                per_stage[name].append(item)
    return per_stage


def stage_config(spec: SystemSpec, index: int, prompt: str, user_overrides: list[str],
                 init_overrides: list[str] | None = None) -> RunConfig:
    """The full config of stage ``index``: its base config <- its overrides <- the user's <- ``init_overrides``."""
    stage = spec.stages[index]
    try:
        return load_config(find_config(stage.config), [*stage.overrides, *user_overrides, *(init_overrides or [])],
                           prompt=prompt)
    except ConfigError as error:
        raise ConfigError(f"stage '{stage.name}' of system {spec.name}: {error}") from None


__all__ = ["STAGE_INITS", "StageSpec", "SystemSpec", "find_system", "load_system", "packaged_systems",
           "split_stage_overrides", "stage_config", "to_dotlist"]
