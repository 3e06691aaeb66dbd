"""`speechkd <command>`: thin wrappers over library functions.

Each command's flags are generated from its config dataclass (`--batch-size` <-> `batch_size`), so
a YAML file (`--config`) and the command line set the same fields, and the merged config is saved
beside the run's outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from speechkd.config import ConfigError, load_config


def _flag_type(tp: Any) -> Callable[[str], Any] | None:
    """argparse converter for a config field type; None for types the CLI does not expose."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _flag_type(args[0])
    if origin is typing.Literal:
        return str
    if origin in (tuple, list):
        inner = _flag_type(args[0]) if args else str
        return (lambda s: [inner(x) for x in s.split(",") if x]) if inner else None
    if tp is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if tp in (int, float, str):
        return tp
    return None


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """--config YAML plus one --flag per simple field of `cls` (default None = keep YAML/default)."""
    parser.add_argument("--config", type=Path, help=f"YAML file with {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        conv = _flag_type(hints[f.name])
        if conv is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=conv, default=None,
                            help=f"(default: {default!r})")


RAW_GREEDY_HELP = ("Whisper models: turn the hallucination guards off (temperature fallback, duration budget, "
                   "repetition rule) and decode plain greedy, for exact comparisons; same as `guards: {enabled: false}`")


def config_from_args(cls: type, args: argparse.Namespace):
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    if getattr(args, "raw_greedy", False):
        overrides["guards"] = {"enabled": False}
    return load_config(cls, args.config, **overrides)


# ---------------------------------------------------------------------------------------- commands


def cmd_synth(args: argparse.Namespace) -> int:
    from speechkd.synth import SynthConfig, synthesize_corpus

    out = synthesize_corpus(args.out, config_from_args(SynthConfig, args))
    print(f"corpus written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from speechkd.evaluate import EvalConfig, format_table, run_eval
    from speechkd.runlog import setup_logging

    cfg = config_from_args(EvalConfig, args)
    setup_logging(args.out, "eval")
    result = run_eval(cfg, args.out)
    print(format_table([result]))
    if args.out:
        print(f"results: {Path(args.out) / 'results.json'}")
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from speechkd.lm import DecodingLMConfig, build_decoding_lm

    summary = build_decoding_lm(config_from_args(DecodingLMConfig, args), args.out)
    print(json.dumps(summary, indent=2))
    print(f"use it: speechkd eval --model CTC_STUDENT --data D --lm {args.out}  (or speechkd export --lm {args.out})")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from speechkd.label import LabelConfig, labels_to_dataset, run_label
    from speechkd.runlog import setup_logging

    cfg = config_from_args(LabelConfig, args)
    setup_logging(args.out.parent, "label")
    summary = run_label(cfg, args.data, args.out, progress=not args.quiet)
    if args.hf_out:
        labels_to_dataset(args.out, args.hf_out, data=args.data)
        print(f"HF dataset saved to {args.hf_out}")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from speechkd.filters import FilterConfig, run_filter, with_thresholds
    from speechkd.io import OutputPaths
    from speechkd.runlog import setup_logging

    cfg = with_thresholds(config_from_args(FilterConfig, args), args.threshold or [])
    setup_logging(args.out.parent, "filter")
    report = run_filter(cfg, args.labels, args.out)
    paths = OutputPaths(args.out)
    print(paths.sibling("report.md").read_text())
    print(f"kept {report['n_kept']} of {report['n_records']} -> {args.out}; all records with scores: "
          f"{paths.sibling('scored.jsonl')}; report: {paths.sibling('report.json')}")
    return 0


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


def cmd_train(args: argparse.Namespace) -> int:
    from speechkd.config import from_dict, to_dict
    from speechkd.train import RunConfig, train

    base = merge_nested(to_dict(config_from_args(RunConfig, args)), parse_sets(args.set))
    cfg = from_dict(RunConfig, base, where=str(args.config or "command line"))
    final = train(cfg, args.out, progress=not args.quiet)
    print(f"student saved to {final}; metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from speechkd.evaluate import format_table

    rows = []
    for run in args.runs:
        path = run / "results.json" if run.is_dir() else run
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run `speechkd eval --out {run}` first")
        rows.append(json.loads(path.read_text()))
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from speechkd import __version__

    p = argparse.ArgumentParser(prog="speechkd", description="Knowledge distillation for speech models.")
    p.add_argument("--version", action="version", version=f"speechkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from speechkd.evaluate import EvalConfig
    from speechkd.label import LabelConfig
    from speechkd.synth import SynthConfig

    s = sub.add_parser("synth", help="synthesise an offline multi-speaker speech corpus (espeak-ng)")
    s.add_argument("--out", required=True, type=Path, help="output corpus folder")
    add_config_args(s, SynthConfig)
    s.set_defaults(func=cmd_synth)

    e = sub.add_parser("eval", help="WER/CER, real-time factor, parameters and size of a model on data with references")
    e.add_argument("--out", type=Path, help="run folder for results.json, per_utterance.jsonl, config.yaml, log/")
    e.add_argument("--raw-greedy", action="store_true", help=RAW_GREEDY_HELP)
    add_config_args(e, EvalConfig)
    e.set_defaults(func=cmd_eval)

    lab = sub.add_parser("label", help="pseudo-label audio with a Whisper teacher (resumable, sharded)")
    lab.add_argument("--data", required=True, help="audio folder, JSONL manifest or saved HF dataset")
    lab.add_argument("--out", required=True, type=Path, help="labels JSONL (siblings: .config.yaml, .skipped.jsonl, .summary.json)")
    lab.add_argument("--hf-out", type=Path, help="also save the labels as an HF dataset (save_to_disk) here")
    lab.add_argument("--quiet", action="store_true", help="no progress bar")
    lab.add_argument("--raw-greedy", action="store_true", help=RAW_GREEDY_HELP)
    add_config_args(lab, LabelConfig)
    lab.set_defaults(func=cmd_label)

    from speechkd.filters import FilterConfig

    f = sub.add_parser("filter", help="score pseudo-labels (with or without references) and keep the good ones")
    f.add_argument("--labels", required=True, type=Path, help="labels JSONL from `speechkd label`")
    f.add_argument("--out", required=True, type=Path, help="kept records JSONL (siblings: .scored.jsonl, .report.json/.md)")
    f.add_argument("--threshold", action="append", metavar="NAME=VALUE", help="drop when score NAME > VALUE "
                   "(repeatable; VALUE none = rank only)")
    add_config_args(f, FilterConfig)
    f.set_defaults(func=cmd_filter)

    from speechkd.lm import DecodingLMConfig

    lm = sub.add_parser("lm", help="word n-gram (Kneser-Ney, ARPA) from pseudo-labels or text, for CTC beam search")
    lm.add_argument("--out", required=True, type=Path, help="ARPA file to write (its config is saved beside it)")
    add_config_args(lm, DecodingLMConfig)
    lm.set_defaults(func=cmd_lm)

    from speechkd.train import RunConfig

    t = sub.add_parser("train", help="distil a student (any method, any student type); resumes when re-run")
    t.add_argument("--out", required=True, type=Path, help="run folder: config.yaml, checkpoints/, final/, log/")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a nested config value, e.g. --set train.max_steps=200 (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(t, RunConfig)
    t.set_defaults(func=cmd_train)

    from speechkd.students.whisper import add_student_parser

    add_student_parser(sub)

    from speechkd.onnx_export.cli import add_export_parser, add_verify_parser

    add_export_parser(sub)
    add_verify_parser(sub)

    r = sub.add_parser("report", help="one table (WER, RTF, parameters, MB) from several `speechkd eval` runs")
    r.add_argument("runs", nargs="+", type=Path, help="eval run folders (or their results.json)")
    r.set_defaults(func=cmd_report)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from speechkd.data import AudioError, DataError

    from speechkd.label import LabelError

    from speechkd.synth import EspeakError

    from speechkd.filters import FilterError
    from speechkd.lm import LMError
    from speechkd_runtime.ngram import ArpaError

    from speechkd.students import StudentError
    from speechkd.train import TrainingError

    known: tuple[type[BaseException], ...] = (ConfigError, DataError, AudioError, FileNotFoundError, LabelError,
                                              EspeakError, FilterError, TrainingError, StudentError, LMError,
                                              ArpaError)
    try:
        from speechkd.teachers import TeacherLoadError

        known += (TeacherLoadError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except known as e:
        print(f"speechkd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"speechkd {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
