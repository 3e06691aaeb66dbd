"""`speechkd eval | report`: measure any model (teacher, student, ONNX export) on data with references."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechkd.cli.args import add_config_args, config_from_args
from speechkd.cli.data import RAW_GREEDY_HELP, raw_greedy
from speechkd.config import ConfigError


def cmd_eval(args: argparse.Namespace) -> int:
    from speechkd.evaluate import EvalConfig, format_table, run_eval
    from speechkd.runlog import setup_logging

    cfg = config_from_args(EvalConfig, args, **raw_greedy(args))
    setup_logging(args.out, "eval")
    result = run_eval(cfg, args.out)
    print(format_table([result]))
    if args.out:
        print(f"results: {Path(args.out) / 'results.json'}")
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from speechkd.evaluate import format_table

    rows = []
    for run in args.runs:
        path = run / "results.json" if run.is_dir() else run
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; run `speechkd eval --out {run}` first")
        rows.append(json.loads(path.read_text()))
    print(format_table(rows))
    return 0


def add_parsers(sub, command) -> None:
    from speechkd.evaluate import EvalConfig

    e = command(sub, "eval", cmd_eval,
                "WER/CER, real-time factor, parameters and size of a model on data with references", [
                    "speechkd eval --model bundled:base --data corpora/demo/test.jsonl --out exp/eval/base",
                    "speechkd eval --model exp/ctc/final --data test.jsonl --lm exp/lm/3gram.arpa --beam-size 16",
                    "speechkd eval --model exp/ctc/onnx --variant model.int8.onnx --data test.jsonl --num-threads 2"])
    e.add_argument("--out", type=Path, help="run folder for results.json, per_utterance.jsonl, config.yaml, log/")
    e.add_argument("--raw-greedy", action="store_true", help=RAW_GREEDY_HELP)
    add_config_args(e, EvalConfig)

    r = command(sub, "report", cmd_report, "one table (WER, RTF, parameters, MB) from several `speechkd eval` runs", [
        "speechkd report exp/eval/teacher exp/eval/student exp/eval/student_int8"])
    r.add_argument("runs", nargs="+", type=Path, help="eval run folders (or their results.json)")
