"""Configs are dataclasses whose defaults are the papers' values.

An experiment is a YAML recipe (a base plus overlays) and ``key=value`` overrides on top;
nested dataclasses are addressed with dots (``optim.lr=1e-4``). Unknown keys are an error
that suggests the closest valid key; values are parsed with YAML and checked against the
field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config; the message says how to fix it."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _dataclass_of(tp) -> type | None:
    """The dataclass inside ``tp`` (``X``, ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a type annotation (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and origin is list:
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    dc = _dataclass_of(tp)
    if dc is not None:
        if isinstance(value, dc):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {dc.__name__}, got {value!r}")
        return from_dict(dc, value, where=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise with a suggestion."""
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in types_:
            raise _unknown(key, list(types_), where)
        if isinstance(value, dict) and _dataclass_of(types_[key]) is not None:
            # a partial section overrides the *parent's* default for it (e.g. a method's own
            # TrainConfig), not the nested class's bare defaults
            default = _field_default(fields[key])
            if dataclasses.is_dataclass(default):
                value = _merge(to_dict(default), value)
        kwargs[key] = _coerce(value, types_[key], f"{where}.{key}" if where != "config" else key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{where}: {e}") from e


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def to_dict(cfg) -> dict[str, Any]:
    """Dataclass -> plain JSON/YAML-able dict (Paths become strings, tuples lists)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML reads 1e-4 as a string; accept scientific notation
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.split("."), value


def _set_nested(d: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{p}' is not a section")
    d[path[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a dict; ``base: other.yaml`` (relative to the file) is merged first."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of key: value")
    base = data.pop("base", None)
    if base:
        data = _merge(read_yaml(path.parent / base), data)
    return data


def build(cls: type[C], recipe: str | Path | dict | None = None, overrides: list[str] = ()) -> C:
    """Defaults of ``cls`` <- recipe (YAML path or dict) <- ``key=value`` overrides."""
    data = read_yaml(recipe) if isinstance(recipe, (str, Path)) else dict(recipe or {})
    where = str(recipe) if isinstance(recipe, (str, Path)) else "config"
    cfg = from_dict(cls, data, where=where)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (validated)."""
    if not overrides:
        return cfg
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        # validate the path against the dataclass tree to give a suggestion at the right depth
        cls = type(cfg)
        for i, p in enumerate(path):
            types_ = _field_types(cls)
            if p not in types_:
                raise _unknown(".".join(path[: i + 1]), [".".join(path[:i] + [k]) for k in types_], "overrides")
            if i < len(path) - 1:
                if dict in (types_[p], typing.get_origin(types_[p])):  # free-form mapping (e.g. model={...}): any keys below
                    break
                nxt = _dataclass_of(types_[p])
                if nxt is None:
                    raise ConfigError(f"override '{text}': '{p}' is not a section")
                cls = nxt
        _set_nested(data, path, value)
    return from_dict(type(cfg), data, where="overrides")


def save_json(cfg, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
