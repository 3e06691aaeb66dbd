"""`speechkd export` and `speechkd verify` (wired into speechkd/cli.py by add_export_parser/add_verify_parser).

Usage:
    speechkd export STUDENT_DIR --out DIR [--quantize dynamic,static] [--calibration MANIFEST] [--data MANIFEST]
    speechkd verify EXPORT_DIR --data MANIFEST [--student STUDENT_DIR] [--tolerance 1e-3]

Both exit 1 when verification fails (the JSON report is written anyway) and 2 on unusable input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from speechkd.cli import config_from_args
    from speechkd.onnx_export.api import export_student
    from speechkd.onnx_export.common import ExportConfig, ExportError
    from speechkd.onnx_export.verify import VerifyError, format_report

    cfg = config_from_args(ExportConfig, args)
    try:
        result = export_student(args.student_dir, args.out, cfg)
    except VerifyError as e:
        if e.report:
            print(format_report(e.report))
        print(f"EXPORT FAILED VERIFICATION: {e}\nThe files are in {args.out}, but the failing model is not the "
              f"runtime's default; fix the cause or loosen --tolerance/--max-wer-increase knowingly.")
        return 1
    except ExportError as e:
        print(f"error: {e}")
        return 2
    print(f"exported to {args.out}: {json.dumps(result['config'].get('onnx', result['config']))}")
    if result["report"]:
        print(format_report(result["report"]))
        default = result["config"].get("default_model") or result["config"].get("default_variant", "fp32")
        print(f"verified; the runtime loads {default} by default")
    elif not cfg.data:
        print("not verified on audio (pass --data MANIFEST to compare ONNX with PyTorch and check int8 WER)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from speechkd.onnx_export.common import ExportError
    from speechkd.onnx_export.verify import VerifyError, format_report, verify

    try:
        report = verify(args.model_dir, args.data, model=args.student, tolerance=args.tolerance,
                        max_wer_increase=args.max_wer_increase, max_utterances=args.max_utterances,
                        batch_size=args.batch_size, num_threads=args.num_threads, report_path=args.report)
    except VerifyError as e:
        if e.report:
            print(format_report(e.report))
        print(f"VERIFICATION FAILED: {e}")
        return 1
    except ExportError as e:
        print(f"error: {e}")
        return 2
    print(format_report(report))
    print(f"passed (report: {report['report_path']})")
    return 0


def add_export_parser(sub) -> argparse.ArgumentParser:
    from speechkd.cli import add_config_args
    from speechkd.onnx_export.common import ExportConfig

    p = sub.add_parser("export", help="export a student to ONNX (fp32 + int8) for the on-device runtime")
    p.add_argument("student_dir", type=Path, help="saved student (CTC or Whisper)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    add_config_args(p, ExportConfig)
    p.set_defaults(func=cmd_export)
    return p


def add_verify_parser(sub) -> argparse.ArgumentParser:
    from speechkd.onnx_export.verify import DEFAULT_MAX_WER_INCREASE, DEFAULT_TOLERANCE

    p = sub.add_parser("verify", help="compare an exported CTC or Whisper model with its PyTorch student on audio")
    p.add_argument("model_dir", type=Path, help="directory written by `speechkd export`")
    p.add_argument("--data", required=True, help="manifest / audio folder / dataset with the audio to check on")
    p.add_argument("--student", type=Path, default=None, help="PyTorch student (default: the one it was exported from)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |log-prob difference| for fp32")
    p.add_argument("--max-wer-increase", type=float, default=DEFAULT_MAX_WER_INCREASE,
                   help="WER points int8 may lose against PyTorch")
    p.add_argument("--max-utterances", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--report", type=Path, default=None, help="JSON report path (default MODEL_DIR/verify.json)")
    p.set_defaults(func=cmd_verify)
    return p
