"""Frozen dataclass configs, one per concern, loaded from YAML and saved beside every run.

Unknown keys and wrong types fail loudly with the key, the file and the valid choices, because a typo
in a config silently falling back to a default is the most expensive bug in a training run.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import os
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from speechkd.io import atomic_write_text
from speechkd.errors import SpeechkdError

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_FIELD_LINE = re.compile(r"^(\s+)([A-Za-z_]\w*)\s*:")


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


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, or a ConfigError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return loaded


def load_config(cls: type[T], path: str | os.PathLike | None = None, **overrides: Any) -> T:
    """Load `cls` from a YAML file (optional) and apply keyword overrides (None means 'not given')."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, where=str(path) if path is not None else "config")


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


def field_docs(cls: type) -> dict[str, str]:
    """What each field of a config dataclass means, read from the comments in its source.

    A field's help is its trailing `# comment`, or else the comment lines right above it. Those comments are
    the one description of a field: `--help`, README tables and readers of the code all see the same text,
    so the flags and the configs cannot drift apart. Inherited fields take their base class's comments.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_field_comments(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def _class_field_comments(klass: type) -> dict[str, str]:
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):  # no source (a frozen app, a REPL class): flags still work, without help
        return {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    comments: dict[int, str] = {}  # line number (in `source`) -> comment text
    code_lines: set[int] = set()
    fields: list[tuple[int, int, str]] = []  # (line, column, name) of each `name: type` statement
    starts_statement, depth = True, 0  # depth: open brackets; a line break inside them continues a statement
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            continue
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            starts_statement = starts_statement or depth == 0
            continue
        code_lines.update(range(tok.start[0], tok.end[0] + 1))
        if starts_statement and tok.type == tokenize.NAME and i + 1 < len(tokens) and tokens[i + 1].string == ":":
            fields.append((tok.start[0], tok.start[1], tok.string))
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        starts_statement = False
    body_column = min((col for _, col, _ in fields), default=0)  # methods' locals are indented deeper
    out: dict[str, str] = {}
    for line, col, name in fields:
        if col != body_column or name in out:
            continue
        if line in comments:
            out[name] = comments[line]
            continue
        above = []
        k = line - 1
        while k in comments and k not in code_lines:
            above.insert(0, comments[k])
            k -= 1
        out[name] = " ".join(above)
    return out
