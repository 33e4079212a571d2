"""YAML recipe + `key=value` overrides -> a typed, strictly checked Config."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from megafin.config.errors import ConfigError
from megafin.config.resolve import resolve
from megafin.config.schema import Config, Switch


def load_config(recipe: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a recipe and apply overrides such as `parallel.tp=2` or `data.blend=[...]` (YAML values)."""
    return resolve(read_config(recipe, overrides))


def read_config(recipe: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """The recipe and overrides as written, every `auto` left unsettled: for `megafin plan`, which settles them for
    the GPUs the recipe is meant for, not for this machine."""
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


def config_from_snapshot(raw: Mapping[str, Any]) -> Config:
    """The Config a checkpoint recorded (its megafin.json `config`), to rebuild its model elsewhere. Keys this schema
    does not know are ignored (a checkpoint of an older or newer megafin still loads); the backends are this
    machine's choice, not the checkpoint's (a model trained with Triton kernels on a GPU loads with SDPA on a CPU:
    the same weights), so they are settled anew."""
    cfg = build(Config, _known_keys(Config, raw), prefix="")
    cfg.model.attention_backend = cfg.model.logprob_backend = "auto"
    cfg.model.fusions = type(cfg.model.fusions)()  # kernels, like backends, are this machine's: all auto
    return resolve(cfg)


def _known_keys(cls: type, raw: Any) -> Any:
    """The part of a config snapshot this schema knows: a checkpoint written by a newer (or older) megafin with
    other sections still converts; only model, precision, data.tokenizer and train.seed matter here."""
    if not isinstance(raw, dict):
        return raw
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            tp = hints[f.name]
            out[f.name] = _known_keys(tp, raw[f.name]) if dataclasses.is_dataclass(tp) else raw[f.name]
    return out


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


class _Invalid(Exception):
    """A value that failed its type check; its line is already recorded."""


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn nested dicts into dataclass `cls`, rejecting unknown keys and wrong types by their full key. Every
    problem in the tree is reported (ConfigError with one line each), not only the first."""
    errors: list[str] = []
    try:
        out = _build(cls, raw, prefix, errors)
    except _Invalid:
        out = None
    if errors:
        raise ConfigError(*errors)
    return out


def _build(cls: type, raw: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
        raise _Invalid
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in sorted(set(raw) - fields):
        errors.append(f"{prefix}{name}: unknown key (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in sorted(fields & set(raw)):
        try:
            kwargs[name] = _convert(hints[name], raw[name], f"{prefix}{name}", errors)
        except _Invalid:
            pass
    return cls(**kwargs)


def _fail(errors: list[str], line: str) -> Any:
    errors.append(line)
    raise _Invalid


def _convert(tp: Any, value: Any, key: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", errors)
    if origin in (list, typing.List):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            _fail(errors, f"{key}: expected a list, got {value!r}")
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_convert(item_tp, v, f"{key}[{i}]", errors))
            except _Invalid:
                pass
        return items
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(errors, f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(errors, f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        _fail(errors, f"{key}: expected a number, got {value!r}")
    if tp is Switch:  # auto | on | off, where YAML turned a bare on/off into a boolean
        if isinstance(value, bool):
            return "on" if value else "off"
        tp = str
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        _fail(errors, f"{key}: expected a string, got {value!r}")
    _fail(errors, f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug
