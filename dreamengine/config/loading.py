"""Loading a run configuration: defaults, YAML files, ``key=value`` overrides, strict validation.

A config is loaded in three layers, each validated against the dataclass schema before the next:

1. the defaults of :class:`RunConfig`;
2. a YAML file (``--config quickstart`` finds ``dreamengine/configs/quickstart.yaml``; a path works too);
3. command-line overrides ``key=value`` (``trainer.max_steps=200``, ``camera.elevation_range=[0,45]``).

The sections ``teacher``, ``guidance`` and ``scene`` are polymorphic: their ``name`` key selects the dataclass
that validates the rest of the section (``guidance.name=sds`` -> ``SDSConfig``), from the plain dicts
``GUIDANCE_CONFIGS``, ``SCENE_CONFIGS`` and ``TEACHER_CONFIGS`` of the schema modules next to this one. A
layer that changes a section's ``name`` replaces the section: the earlier layers' keys for the old name are
dropped (``--config quickstart guidance.name=ism`` gives ISM's defaults). Unknown keys, wrong types and
interpolations (``${...}``, which could read the environment) stop loading with a :class:`ConfigError` naming
the key, where it came from, and the closest valid key.
"""

from __future__ import annotations

import difflib
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dreamengine.config.checks import check_ranges, check_view_groups
from dreamengine.config.run import DEFAULT_NAMES, POLYMORPHIC_SECTIONS, RunConfig
from dreamengine.errors import ConfigError


def available_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    folder = resources.files("dreamengine") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged config (``quickstart``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = resources.files("dreamengine") / "configs" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    names = available_configs()
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a packaged config.{hint} "
                      f"Packaged configs: {', '.join(names)}. Pass a name or a path to a .yaml file.")


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends: report them as the user's file problem
        raise ConfigError(f"could not read config file {path}: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values at the top level")
    return loaded


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (for example trainer.max_steps=200)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(f"could not parse overrides {' '.join(overrides)}: {error}") from None


def _reject_interpolations(node: Any, source: str, prefix: str = "") -> None:
    if isinstance(node, DictConfig):
        for key in node.keys():
            full_key = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_interpolation(node, key):
                raise ConfigError(f"{full_key} in {source} uses an interpolation (${{...}}); configs hold plain "
                                  "values only: write the value itself")
            _reject_interpolations(node._get_node(key), source, full_key)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            if OmegaConf.is_interpolation(node, index):
                raise ConfigError(f"{prefix}[{index}] in {source} uses an interpolation (${{...}}); configs hold "
                                  "plain values only")


def _valid_keys(schema: DictConfig, full_key: str) -> list[str]:
    parent_key = full_key.rpartition(".")[0]
    node = OmegaConf.select(schema, parent_key) if parent_key else schema
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _merge_layer(schema: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, layer)
    except ConfigKeyError as error:
        key = error.full_key or str(error.key)
        leaf = key.rpartition(".")[2]
        valid = _valid_keys(schema, key)
        close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{key.rpartition('.')[0] + '.' if '.' in key else ''}{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {source}.{hint} "
                          f"Valid keys here: {', '.join(valid)}.") from None
    except ValidationError as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"wrong value for config key '{error.full_key}' in {source}: {message}") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid config in {source}: {str(error).splitlines()[0]}") from None
    except (TypeError, ValueError) as error:  # OmegaConf's own: a mapping given where a list or number belongs
        raise ConfigError(f"invalid value in {source}: {error} (a mapping where a list or a single value belongs, "
                          "or the other way round?)") from None


def _section_name(section: str, layers: list[DictConfig]) -> str:
    name = DEFAULT_NAMES[section]
    for layer in layers:
        value = OmegaConf.select(layer, f"{section}.name", default=None)
        if value is not None:
            name = str(value)
    choices = POLYMORPHIC_SECTIONS[section]
    if name not in choices:
        close = difflib.get_close_matches(name, list(choices), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {section}.name '{name}'.{hint} Choices: {', '.join(choices)}.")
    return name


def _drop_replaced_sections(layer: DictConfig, names: dict[str, str], index: int,
                            layers: list[DictConfig]) -> DictConfig:
    """``layer`` without the polymorphic sections it wrote for a ``name`` that a later layer replaced.

    ``--config quickstart guidance.name=ism``: quickstart's guidance keys were written for SDS, and ISM's
    config starts from its own defaults instead of failing on SDS-only keys."""
    stale = []
    for section, final in names.items():
        if section not in layer:
            continue
        current = DEFAULT_NAMES[section]  # the name in force when this layer was written
        for earlier in layers[: index + 1]:
            value = OmegaConf.select(earlier, f"{section}.name", default=None)
            if value is not None:
                current = str(value)
        if current != final:
            stale.append(section)
    if not stale:
        return layer
    kept = OmegaConf.to_container(layer)
    for section in stale:
        kept.pop(section)
    return OmegaConf.create(kept)


# Keys earlier versions wrote into runs' config.yaml, and what they became, so old runs still resume and evaluate:
# old dotted key -> (new dotted key, function of the old value giving the new one).
RENAMED_KEYS: dict[str, tuple[str, Any]] = {
    "eval.elevation": ("eval.elevations", lambda value: [value]),  # one held-out elevation became several
}


def _migrate_renamed_keys(layer: DictConfig) -> DictConfig:
    """``layer`` with the keys of :data:`RENAMED_KEYS` renamed (a key given in both forms keeps the new one)."""
    found = [key for key in RENAMED_KEYS if OmegaConf.select(layer, key, default=None) is not None]
    if not found:
        return layer
    data = OmegaConf.to_container(layer)
    for key in found:
        new_key, convert = RENAMED_KEYS[key]
        section, _, leaf = key.rpartition(".")
        value = data[section].pop(leaf)
        new_section, _, new_leaf = new_key.rpartition(".")
        data.setdefault(new_section, {}).setdefault(new_leaf, convert(value))
    return OmegaConf.create(data)


def load_config(config: str | Path | None = None, overrides: list[str] | None = None,
                prompt: str | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` from defaults, an optional YAML file and overrides."""
    overrides = list(overrides or [])
    layers: list[tuple[DictConfig, str]] = []
    if config is not None:
        path = find_config(str(config))
        layers.append((_read_yaml(path), f"config file {path}"))
    if overrides:
        layers.append((_parse_overrides(overrides), "the command-line overrides"))
    if prompt is not None:
        layers.append((OmegaConf.create({"prompt": prompt}), "the prompt argument"))
    for layer, source in layers:
        _reject_interpolations(layer, source)
    layers = [(_migrate_renamed_keys(layer), source) for layer, source in layers]

    names = {s: _section_name(s, [la for la, _ in layers]) for s in POLYMORPHIC_SECTIONS}
    layers = [(_drop_replaced_sections(layer, names, index, [la for la, _ in layers]), source)
              for index, (layer, source) in enumerate(layers)]
    sections = {s: POLYMORPHIC_SECTIONS[s][names[s]]() for s in POLYMORPHIC_SECTIONS}
    merged = OmegaConf.structured(RunConfig(**sections))
    for layer, source in layers:
        merged = _merge_layer(merged, layer, source)
    try:
        cfg = OmegaConf.to_object(merged)  # runs each dataclass's __post_init__ checks
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid config: {str(error).splitlines()[0]}") from None
    check_ranges(cfg)  # every number finite and in its range
    check_view_groups(cfg)  # a multi-view teacher gets whole groups of views
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML (what is written to ``RUN_DIR/config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the resolved YAML: two runs with the same hash were configured identically."""
    return hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()
