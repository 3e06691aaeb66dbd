"""Flags from config dataclasses: one source for a field's name, type, default and help.

`add_config_args(parser, SomeConfig)` adds `--config YAML`, `--set KEY=VALUE` and one flag per field, its help
text read from the field's comment in the source (`speechkd.config.field_docs`). Nested config dataclasses get
dotted flags (`--guards.max-repeats`, `--train.max-steps`); booleans are `--x/--no-x` switches; `Literal`
fields list and check their choices. Every flag defaults to "not given", so a YAML file, `--set` and flags
layer in that order over the dataclass defaults, and `config_from_args` returns the merged frozen config.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable

from speechkd.config import ConfigError, field_docs, from_dict, read_config_file

NULL_WORDS = ("none", "null")  # `--max-utterances none` sets an optional field to None explicitly


class _Null:
    """An explicit `none` on the command line, told apart from a flag that was not given (None)."""

    def __repr__(self) -> str:
        return "none"


NULL = _Null()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written; wider help column than argparse's default."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=36, width=110)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _scalar(tp: Any) -> Callable[[str], Any] | None:
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return str
    return None


def _converter(tp: Any, optional: bool) -> Callable[[str], Any] | None:
    """argparse type for a (non-bool) field; None: not a command-line field (use --config or --set)."""
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        inner = _scalar((typing.get_args(tp) or (str,))[0])
        if inner is None:
            return None
        conv = lambda s: [inner(x) for x in s.split(",") if x.strip()]  # noqa: E731 - "a,b,c"; "" is empty
    elif origin is typing.Literal:
        conv = str
    else:
        conv = _scalar(tp)
        if conv is None:
            return None
    if not optional:
        return conv

    def maybe_null(s: str) -> Any:
        return NULL if s.strip().lower() in NULL_WORDS else conv(s)

    maybe_null.__name__ = getattr(conv, "__name__", "value")  # argparse names the type in its errors
    return maybe_null


def _help(doc: str, default: Any, optional: bool) -> str:
    shown = "none" if default is None else "empty" if default in ((), []) else (",".join(map(str, default)) if isinstance(default, (tuple, list))
                                            else default)
    text = doc.rstrip(".") if doc else ""
    extra = f"default: {shown}" + ("; `none` unsets it" if optional and default is not None else "")
    full = f"{text} ({extra})" if text else f"({extra})"
    return full.replace("%", "%%")  # argparse %-formats help strings


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, only: set[str] | None = None,
                    prefix: str = "", title: str | None = None) -> None:
    """--config, --set and one flag per field of `cls` (only those in `only`, when given)."""
    if not prefix:
        parser.add_argument("--config", type=Path, metavar="YAML",
                            help=f"YAML file with {cls.__name__} fields; flags given on the command line win")
        parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="config_set",
                            help="set any config value, nested ones too, e.g. --set train.max_steps=200 "
                                 "(value parsed as YAML; repeatable)")
    group = parser.add_argument_group(title or f"{cls.__name__} (config fields)")
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        dest = prefix + f.name
        flag = "--" + dest.replace("_", "-")
        default = _default(f)
        if dataclasses.is_dataclass(tp):
            add_config_args(parser, tp, prefix=dest + ".", title=f"{dest}: {(docs[f.name] or tp.__name__).rstrip('.')}")
            continue
        help_text = _help(docs[f.name], default, optional)
        if tp is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        conv = _converter(tp, optional)
        if conv is None:
            continue  # mappings and the like: --config or --set
        choices = list(typing.get_args(tp)) if typing.get_origin(tp) is typing.Literal else None
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else f.name.upper().split(".")[-1]
        if choices:
            allowed = set(map(str, choices)) | ({NULL} if optional else set())
            conv = _checked(conv, allowed, f.name)
        group.add_argument(flag, dest=dest, type=conv, default=None, metavar=metavar, help=help_text)


def _checked(conv: Callable[[str], Any], allowed: set, name: str) -> Callable[[str], Any]:
    def check(s: str) -> Any:
        value = conv(s)
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{s!r} is not one of {sorted(map(str, allowed))}")
        return value

    check.__name__ = name
    return check


def parse_sets(items: list[str] | None) -> dict:
    """`--set train.max_steps=200 --set student.decoder_layers=2` -> nested dict (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_steps=200")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def merge_nested(base: dict, override: dict) -> dict:
    """`override` on top of `base`, merging mappings at every depth (so one --set key keeps its siblings)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_nested(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _given_flags(args: argparse.Namespace) -> dict:
    """The config flags given on the command line, as a nested dict (dotted dests become nesting)."""
    out: dict = {}
    for dest, value in vars(args).items():
        if value is None or dest in ("config", "config_set", "func", "debug") or dest.startswith("_"):
            continue
        node = out
        *parents, leaf = dest.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None if value is NULL else value
    return out


def config_from_args(cls: type, args: argparse.Namespace, **extra: Any):
    """The config of a command: dataclass defaults < --config YAML < --set < flags < `extra` (set by the command)."""
    names = {f.name for f in dataclasses.fields(cls)}
    path = getattr(args, "config", None)
    base = read_config_file(path) if path else {}
    flags = {k: v for k, v in _given_flags(args).items() if k in names}
    merged = merge_nested(merge_nested(merge_nested(base, parse_sets(getattr(args, "config_set", None))), flags),
                          extra)
    return from_dict(cls, merged, where=str(path or "command line"))
