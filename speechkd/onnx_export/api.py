"""`speechkd export` in one place: pick the exporter for a saved student (CTC or Whisper), then verify.

The exporters (ctc.py, whisper_onnx.py) and the verifier (verify.py) know nothing of each other or of
this module; only this dispatch combines them, so none of them has to import another to offer the
one-call export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from speechkd.io import atomic_write_json
from speechkd.onnx_export.common import ExportConfig, ExportError
from speechkd.onnx_export.ctc import CONFIG_FILE, FP32_FILE, export_ctc
from speechkd.onnx_export.verify import VerifyError, verify
from speechkd.onnx_export.whisper_onnx import export_whisper


def is_whisper_student(path: str | os.PathLike) -> bool:
    from speechkd.students import is_student_dir, read_student_file

    return is_student_dir(path) and read_student_file(path)[0] == "whisper"


def export_student(student_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config: ExportConfig = ExportConfig()) -> dict:
    """`speechkd export`: export any saved student, verify when config.data is set; raises VerifyError on failure.

    Returns {"config": ..., "report": verification report or None}.
    """
    config.validate()
    if is_whisper_student(student_dir) and config.lm:
        raise ExportError(f"{student_dir} is a Whisper student: --lm (a word n-gram for CTC beam search) does not "
                          f"apply; drop it")
    if is_whisper_student(student_dir):
        written = Path(export_whisper(student_dir, out_dir, quantize=tuple(config.quantize)))
        cfg_path = written / CONFIG_FILE
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {"out_dir": str(written)}
        report = None
        if config.data:  # a failure raises VerifyError; fp32 stays the runtime's default variant either way
            report = verify(written, config.data, tolerance=config.tolerance, max_wer_increase=config.max_wer_increase,
                            max_utterances=config.max_utterances, batch_size=config.batch_size,
                            num_threads=config.num_threads)
        return {"config": cfg, "report": report}
    if Path(out_dir).resolve() == Path(student_dir).resolve():
        raise ExportError("--out must differ from the student directory (its config.json would be overwritten)")
    cfg = export_ctc(student_dir, out_dir, config)
    report = None
    if config.data:
        try:
            report = verify(out_dir, config.data, tolerance=config.tolerance, max_wer_increase=config.max_wer_increase,
                            max_utterances=config.max_utterances, batch_size=config.batch_size,
                            num_threads=config.num_threads)
        except VerifyError as e:
            _pick_default(out_dir, cfg, e.report)
            raise
        cfg = _pick_default(out_dir, cfg, report)
    return {"config": cfg, "report": report}


def _pick_default(out_dir: str | os.PathLike, cfg: dict, report: dict | None) -> dict:
    """Make the runtime load the most accurate int8 model that passed verification (fp32 if none did)."""
    passed = [(v["wer_vs_pytorch"], name) for name, v in (report or {}).get("variants", {}).items()
              if name != "fp32" and v.get("passed")]
    cfg = dict(cfg)
    cfg["default_model"] = cfg["onnx"][min(passed)[1]] if passed else FP32_FILE
    cfg["verified"] = bool(report and report.get("passed"))
    atomic_write_json(Path(out_dir) / CONFIG_FILE, cfg)
    return cfg
