"""`speechkd export | verify`: ONNX (fp32 + int8) for the on-device runtime, checked against PyTorch.

Exit codes: 0 exported/verified; 1 the export was written but failed verification (the report is printed and
saved); 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechkd.cli.args import add_config_args, config_from_args
from speechkd.config import ConfigError

# The ExportConfig fields that say how to verify; `speechkd verify` takes exactly these.
VERIFY_FIELDS = {"data", "max_utterances", "tolerance", "max_wer_increase", "batch_size", "num_threads"}


def cmd_export(args: argparse.Namespace) -> int:
    from speechkd.onnx_export import ExportConfig, export_student
    from speechkd.onnx_export.verify import VerifyError, format_report

    cfg = config_from_args(ExportConfig, args)
    try:
        result = export_student(args.student_dir, args.out, cfg)
    except VerifyError as e:
        if e.report:
            print(format_report(e.report))
        raise VerifyError(f"the export failed verification: {e}. The files are in {args.out}, but the failing "
                          f"model is not the runtime's default; fix the cause or loosen --tolerance/"
                          f"--max-wer-increase knowingly", e.report) from e
    print(f"exported to {args.out}: {json.dumps(result['config'].get('onnx', result['config']))}")
    if result["report"]:
        print(format_report(result["report"]))
        default = result["config"].get("default_model") or result["config"].get("default_variant", "fp32")
        print(f"verified; the runtime loads {default} by default")
    elif not cfg.data:
        print("not verified on audio (pass --data MANIFEST to compare ONNX with PyTorch and check int8 WER)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from speechkd.onnx_export import ExportConfig
    from speechkd.onnx_export.verify import VerifyError, format_report, verify

    cfg = config_from_args(ExportConfig, args)
    if not cfg.data:
        raise ConfigError("verify needs audio: pass --data MANIFEST (or an audio folder / saved dataset)")
    try:
        report = verify(args.model_dir, cfg.data, model=args.student, tolerance=cfg.tolerance,
                        max_wer_increase=cfg.max_wer_increase, max_utterances=cfg.max_utterances,
                        batch_size=cfg.batch_size, num_threads=cfg.num_threads, report_path=args.report)
    except VerifyError as e:
        if e.report:
            print(format_report(e.report))
        raise
    print(format_report(report))
    print(f"passed (report: {report['report_path']})")
    return 0


def add_parsers(sub, command) -> None:
    from speechkd.onnx_export import ExportConfig

    p = command(sub, "export", cmd_export, "export a student to ONNX (fp32 + int8) for the on-device runtime", [
        "speechkd export exp/ctc/final --out exp/ctc/onnx --data corpora/demo/dev.jsonl",
        "speechkd export exp/ctc/final --out exp/ctc/onnx --quantize dynamic,static --calibration dev.jsonl "
        "--lm exp/lm/3gram.arpa",
        "speechkd export exp/whisper_kd/final --out exp/whisper_kd/onnx --data dev.jsonl --max-utterances 50"])
    p.add_argument("student_dir", type=Path, help="saved student (CTC or Whisper)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    add_config_args(p, ExportConfig)

    v = command(sub, "verify", cmd_verify,
                "compare an exported CTC or Whisper model with its PyTorch student on audio", [
                    "speechkd verify exp/ctc/onnx --data corpora/demo/test.jsonl",
                    "speechkd verify exp/ctc/onnx --data test.jsonl --max-utterances none --tolerance 2e-3"])
    v.add_argument("model_dir", type=Path, help="directory written by `speechkd export`")
    v.add_argument("--student", type=Path, default=None,
                   help="PyTorch student (default: the one it was exported from)")
    v.add_argument("--report", type=Path, default=None, help="JSON report path (default: MODEL_DIR/verify.json)")
    add_config_args(v, ExportConfig, only=VERIFY_FIELDS, title="verification (ExportConfig fields)")
