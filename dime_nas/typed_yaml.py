"""Read a YAML mapping into (nested) dataclasses, checking every key and type.

Errors are ``ConfigError`` naming the file, the dotted key and the problem, with a
"did you mean" for misspelt keys. Supported field types: int, float, str, bool,
``X | None``, ``list[X]``, ``dict[str, X]``, nested dataclasses, and unions of a
scalar with a list (e.g. ``str | list[str]``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a YAML mapping at the top level", file=path)
    return data


def from_mapping(cls: type, data: Any, *, key: str = "", file: str | Path | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {_show(data)}", file=file, key=key or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            raise ConfigError("unknown key" + did_you_mean(str(name), fields), file=file, key=sub)
        kwargs[name] = _convert(hints[name], value, sub, file)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError("missing required key", file=file, key=f"{key}.{missing[0]}" if key else missing[0])
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(exc.problem, file=file, key=exc.key or key or None) from None
    except ValueError as exc:
        raise ConfigError(str(exc), file=file, key=key or None) from None


def _convert(tp: Any, value: Any, key: str, file: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key, file)
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        if len(errors) == 1 or any(dataclasses.is_dataclass(a) for a in args):
            raise errors[-1]
        raise ConfigError(f"expected {names}, got {_show(value)}", file=file, key=key)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key=key, file=file)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {_show(value)}", file=file, key=key)
        return [_convert(args[0], v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_show(value)}", file=file, key=key)
        return {str(k): _convert(args[1], v, f"{key}.{k}", file) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_show(value)}", file=file, key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_show(value)}", file=file, key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {_show(value)}", file=file, key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"expected a string, got {_show(value)}", file=file, key=key)
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def to_plain(obj: Any) -> Any:
    """Dataclasses -> plain dicts/lists (for JSON/YAML dumps)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
