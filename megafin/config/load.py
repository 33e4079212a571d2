"""YAML recipe + `key=value` overrides -> a typed, strictly checked Config."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from megafin.config.errors import ConfigError
from megafin.config.schema import Config


def load_config(recipe: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a recipe and apply overrides such as `parallel.tp=2` or `data.blend=[...]` (YAML values)."""
    raw: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe: file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe: {path} must be a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    return build(Config, raw, prefix="")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override: '{item}' is not of the form key=value (e.g. parallel.tp=2)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn nested dicts into dataclass `cls`, rejecting unknown keys and wrong types by their full key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{where}: unknown key (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in fields:
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], f"{prefix}{name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=key + ".")
    if origin in (list, typing.List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug
