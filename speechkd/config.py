"""Frozen dataclass configs, one per concern, loaded from YAML and saved beside every run.

Unknown keys and wrong types fail loudly with the key, the file and the valid choices, because a typo
in a config silently falling back to a default is the most expensive bug in a training run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from speechkd.io import atomic_write_text
from speechkd.errors import SpeechkdError

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(SpeechkdError, ValueError):
    """A configuration that cannot be used; the message says which key and how to fix it."""


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: key '{key}' = {value!r} does not fit {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: key '{key}' = {value!r}; choose one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' should be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key '{key}' should be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key '{key}' should be a mapping, got {value!r}")
        return from_dict(tp, value, where=f"{where}:{key}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{key}' should be true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string; users mean the number.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: key '{key}' should be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: key '{key}' should be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: key '{key}' should be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build a (possibly nested) frozen dataclass from a mapping, rejecting unknown keys."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # ValueError: a config that validates itself on construction
        raise ConfigError(f"{where}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
    return obj


def load_config(cls: type[T], path: str | os.PathLike | None = None, **overrides: Any) -> T:
    """Load `cls` from a YAML file (optional) and apply keyword overrides (None means 'not given')."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, where=where)


def to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
