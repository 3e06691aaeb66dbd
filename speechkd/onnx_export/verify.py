"""Check an exported CTC model against the PyTorch student it came from, on real audio.

    from speechkd.onnx_export.verify import verify
    report = verify("exp/ctc/onnx", "data/dev.jsonl")     # raises VerifyError when a check fails

Checks, all on the same features (computed once by the shared front end) and the same padded batches:
  fp32   max |log p_onnx - log p_torch| over every valid frame of every utterance <= tolerance
         (default 1e-3 nats; fp32 graph differences are ~1e-5, so anything near the tolerance means a
         wrong graph, not rounding), and identical output lengths.
  int8   WER lost against PyTorch <= max_wer_increase (absolute points): measured against the references
         when every utterance has one (WER_int8 - WER_torch), otherwise against PyTorch's transcripts
         (WER of int8 hypotheses with PyTorch hypotheses as references).
The report (JSON, written to MODEL_DIR/verify.json unless told otherwise) holds WER against the
references and against PyTorch for every variant, the log-prob differences, and the failures.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speechkd.io import atomic_write_json
from speechkd.errors import EXIT_CHECK_FAILED, SpeechkdError
from speechkd.onnx_export.common import max_abs_diff, torch_log_probs
from speechkd_runtime.audio import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

REPORT_FILE = "verify.json"
DEFAULT_TOLERANCE = 1e-3
DEFAULT_MAX_WER_INCREASE = 1.0


class VerifyError(SpeechkdError, RuntimeError):
    """An export that failed verification; `report` holds the measurements and `failures` the reasons."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _load_torch_model(model_dir: Path, config: dict, model: Any):
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model.eval()
    source = model if model is not None else config.get("source_student_dir")
    if not source:
        raise VerifyError(f"{model_dir}/config.json names no source student (it was exported from a model in "
                          f"memory); pass the student directory with --student DIR", {})
    if not Path(source).is_dir():
        raise VerifyError(f"the source student {source} named in {model_dir}/config.json does not exist; "
                          f"pass the student directory with --student DIR", {})
    from speechkd.onnx_export.ctc import load_ctc_student

    return load_ctc_student(source)


def _check_same_model(model, config: dict, model_dir: Path) -> None:
    from speechkd.students.ctc import ctc_model_config

    actual = ctc_model_config(model)
    for key in ("vocab_size", "blank_id", "frontend", "subsampling_factor"):
        if actual.get(key) != config.get(key):
            raise VerifyError(f"the PyTorch student and {model_dir}/config.json disagree on {key} "
                              f"({actual.get(key)!r} vs {config.get(key)!r}); verify an export against the "
                              f"student it was made from", {})


def _load_features(data: str, frontend: dict, max_utterances: int | None) -> tuple[list, list[np.ndarray]]:
    from speechkd.data import AudioConfig, SkipList, iter_audio, open_data
    from speechkd_runtime.features import compute_features

    utts = open_data(data)
    if max_utterances is not None:
        utts = utts[:max_utterances]
    cfg = AudioConfig(sample_rate=int(frontend.get("sample_rate", SAMPLE_RATE_HZ)))
    kept, feats = [], []
    for utt, audio in iter_audio(utts, cfg, SkipList(None, "verify")):
        kept.append(utt)
        feats.append(compute_features(frontend, audio))
    if not kept:
        raise VerifyError(f"no usable audio in {data}", {})
    return kept, feats


def _batches(feats: Sequence[np.ndarray], batch_size: int, min_len: int) -> list[list[int]]:
    order = sorted((i for i in range(len(feats)) if len(feats[i]) >= min_len), key=lambda i: len(feats[i]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _wer(refs: list[str], hyps: list[str]) -> float:
    from speechkd.metrics import score

    return round(score(refs, hyps, with_alignment=False).wer, 3)


def verify(model_dir: str | os.PathLike, data: str, *, model: Any = None, tolerance: float = DEFAULT_TOLERANCE,
           max_wer_increase: float = DEFAULT_MAX_WER_INCREASE, max_utterances: int | None = None,
           batch_size: int = 8, num_threads: int | None = None,
           report_path: str | os.PathLike | None = None) -> dict:
    """Verify every ONNX file of an export directory; returns the report or raises VerifyError (report saved)."""
    from speechkd_runtime.ctc import CtcModel, pad_value_for, read_config
    from speechkd_runtime.features import pad_batch

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if config.get("model_type") == "whisper":
        return verify_whisper(model_dir, data, model=model, tolerance=tolerance, max_wer_increase=max_wer_increase,
                              max_utterances=max_utterances, batch_size=batch_size, num_threads=num_threads,
                              report_path=report_path)
    if config.get("model_type") != "ctc":
        raise VerifyError(f"{model_dir}: model_type {config.get('model_type')!r}; `speechkd verify` checks CTC "
                          f"and Whisper exports", {})
    torch_model = _load_torch_model(model_dir, config, model)
    _check_same_model(torch_model, config, model_dir)
    frontend = dict(config["frontend"])
    utts, feats = _load_features(data, frontend, max_utterances)
    pad = pad_value_for(frontend)
    batches = _batches(feats, batch_size, int(config.get("min_input_frames", 1)))
    n = sum(len(b) for b in batches)
    log.info("verifying %s on %d utterances of %s", model_dir, n, data)

    ref_lp: dict[int, np.ndarray] = {}
    for idx in batches:
        x, lens = pad_batch([feats[i] for i in idx], pad)
        for i, lp in zip(idx, torch_log_probs(torch_model, x, lens)[0]):
            ref_lp[i] = lp
    ids = sorted(ref_lp)
    variants = {name: file for name, file in config.get("onnx", {"fp32": "model.onnx"}).items()}
    runtimes = {name: CtcModel(model_dir, model_file=file, num_threads=num_threads) for name, file in variants.items()}
    decode = next(iter(runtimes.values())).decode
    torch_hyps = [decode(ref_lp[i]) for i in ids]
    has_refs = all(utts[i].text for i in ids)
    refs = [utts[i].text or "" for i in ids]
    report: dict[str, Any] = {
        "model_dir": str(model_dir), "data": str(data), "num_utterances": len(ids), "tolerance": tolerance,
        "max_wer_increase": max_wer_increase,
        "int8_criterion": "WER vs references" if has_refs else "WER vs PyTorch transcripts",
        "pytorch": {"wer": _wer(refs, torch_hyps) if has_refs else None},
        "variants": {}, "failures": [],
    }
    for name, rt in runtimes.items():
        lp: dict[int, np.ndarray] = {}
        # Score each variant the way the runtime runs it (dynamic int8: one utterance per call).
        for idx in (batches if rt.batch_independent else [[i] for b in batches for i in b]):
            x, lens = pad_batch([feats[i] for i in idx], pad)
            out, out_lens = rt.run(x, lens)
            for j, i in enumerate(idx):
                lp[i] = out[j, : int(out_lens[j])]
        diff = max_abs_diff([ref_lp[i] for i in ids], [lp[i] for i in ids])
        hyps = [rt.decode(lp[i]) for i in ids]
        agree = float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) if a.shape == b.shape and a.size else 1.0
                               for a, b in ((ref_lp[i], lp[i]) for i in ids)]))
        entry = {"file": variants[name], "max_abs_logprob_diff": diff, "frame_argmax_agreement": round(agree, 5),
                 "wer": _wer(refs, hyps) if has_refs else None, "wer_vs_pytorch": _wer(torch_hyps, hyps)}
        _judge(report, name, entry, tolerance, max_wer_increase)
    return _finish(report, model_dir, report_path)


def verify_whisper(model_dir: Path, data: str, *, model: Any = None, tolerance: float = DEFAULT_TOLERANCE,
                   max_wer_increase: float = DEFAULT_MAX_WER_INCREASE, max_utterances: int | None = None,
                   batch_size: int = 8, num_threads: int | None = None,
                   report_path: str | os.PathLike | None = None) -> dict:
    """The Whisper counterpart of verify(): each variant's decoder log-probabilities, teacher-forced on the
    PyTorch model's greedy tokens, against PyTorch's (fp32 must stay within `tolerance`), and each variant's
    greedy WER against PyTorch's (int8 may lose at most `max_wer_increase` points)."""
    import torch

    from speechkd.data import AudioConfig, SkipList, iter_audio, open_data
    from speechkd.evaluate import WhisperRecognizer
    from speechkd.teachers import load_whisper
    from speechkd.teachers.bundled import TeacherLoadError
    from speechkd_runtime.whisper import WhisperModel, read_config

    config = read_config(model_dir)
    source = model or config.get("source_student_dir")
    if not source:
        raise VerifyError(f"{model_dir}/config.json does not name the model it was exported from; pass --student "
                          f"with the Whisper student (or teacher) directory", {})
    try:
        teacher = load_whisper(str(source))
    except TeacherLoadError as e:
        raise VerifyError(f"cannot load the PyTorch model {source} to verify {model_dir} against: {e}", {}) from e
    utts = open_data(data)[:max_utterances] if max_utterances else open_data(data)
    audio_cfg = AudioConfig(sample_rate=SAMPLE_RATE_HZ, max_duration_s=30.0)
    items = list(iter_audio(utts, audio_cfg, SkipList(None, "verify")))
    if not items:
        raise VerifyError(f"no usable audio in {data} to verify {model_dir} with", {})
    audios = [a for _, a in items]
    torch_model = WhisperRecognizer(teacher, backend="transformers", batch_size=batch_size)
    torch_hyps = torch_model.transcribe(audios)
    runtimes = {name: WhisperModel(model_dir, variant=name, num_threads=num_threads) for name in config["files"]}
    fp32 = runtimes.get("fp32") or next(iter(runtimes.values()))
    # Teacher-forced comparison on up to `batch_size` clips: the prompt plus PyTorch's own greedy tokens.
    probe = list(range(min(batch_size, len(audios))))
    mels = np.stack([fp32.features(audios[i]) for i in probe])
    ids = teacher.generate_token_ids([audios[i] for i in probe], batch_size=len(probe))
    prompt = fp32.prompt()
    ref_lp, run_lp = [], {name: [] for name in runtimes}
    hf = teacher.model.float().eval()
    for j, i in enumerate(probe):
        tokens = np.array([prompt + list(ids[j])], dtype=np.int64)
        with torch.no_grad():
            logits = hf(input_features=torch.from_numpy(mels[j:j + 1]),
                        decoder_input_ids=torch.from_numpy(tokens)).logits
        ref_lp.append(torch.log_softmax(logits.float(), -1)[0].numpy())
        for name, rt in runtimes.items():
            out = rt.logits(mels[j:j + 1], tokens)[0].astype(np.float64)
            run_lp[name].append(out - np.logaddexp.reduce(out, axis=-1, keepdims=True))
    has_refs = all(u.text for u, _ in items)
    refs = [u.text or "" for u, _ in items]
    report: dict[str, Any] = {
        "model_dir": str(model_dir), "data": str(data), "source": str(source), "num_utterances": len(items),
        "tolerance": tolerance, "max_wer_increase": max_wer_increase,
        "int8_criterion": "WER vs references" if has_refs else "WER vs PyTorch transcripts",
        "pytorch": {"wer": _wer(refs, torch_hyps) if has_refs else None}, "variants": {}, "failures": [],
    }
    for name, rt in runtimes.items():
        hyps = rt.transcribe(audios)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_lp, run_lp[name]))
        agree = float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(ref_lp, run_lp[name])]))
        files = config["files"][name]
        entry = {"file": "+".join(files.values()) if isinstance(files, dict) else str(files),
                 "max_abs_logprob_diff": diff, "frame_argmax_agreement": round(agree, 5),
                 "wer": _wer(refs, hyps) if has_refs else None, "wer_vs_pytorch": _wer(torch_hyps, hyps)}
        _judge(report, name, entry, tolerance, max_wer_increase)
    return _finish(report, model_dir, report_path)


def _judge(report: dict, name: str, entry: dict, tolerance: float, max_wer_increase: float) -> None:
    """Pass or fail one variant into the report: fp32 on its log-prob difference from PyTorch, the others
    (int8) on the WER they lose against PyTorch (vs references when the data has them)."""
    if name == "fp32":
        diff = entry["max_abs_logprob_diff"]
        ok = diff <= tolerance
        if not ok:
            report["failures"].append(f"fp32: max |log-prob difference| {diff:.3g} > tolerance {tolerance} "
                                      f"(the ONNX graph does not compute what the PyTorch model computes)")
    else:
        has_refs = report["pytorch"]["wer"] is not None
        loss = entry["wer"] - report["pytorch"]["wer"] if has_refs else entry["wer_vs_pytorch"]
        entry["wer_increase"] = round(loss, 3)
        ok = loss <= max_wer_increase
        if not ok:
            report["failures"].append(f"{name}: loses {loss:.2f} WER points against PyTorch "
                                      f"({report['int8_criterion']}), more than the allowed {max_wer_increase}")
    entry["passed"] = bool(ok)
    report["variants"][name] = entry


def _finish(report: dict, model_dir: Path, report_path: str | os.PathLike | None) -> dict:
    """Save the report atomically; raise VerifyError naming every failure."""
    report["passed"] = not report["failures"]
    path = Path(report_path) if report_path else model_dir / REPORT_FILE
    atomic_write_json(path, report)
    report["report_path"] = str(path)
    if report["failures"]:
        raise VerifyError(f"verification of {model_dir} failed: " + "; ".join(report["failures"]) +
                          f" (report: {path})", report)
    return report


def format_report(report: dict) -> str:
    """A small table: one row per variant (PyTorch first)."""
    rows = [("variant", "file", "max|dlogp|", "argmax agree", "WER", "WER vs torch", "ok")]
    rows.append(("pytorch", "-", "-", "-", _fmt(report["pytorch"]["wer"]), "-", "-"))
    for name, v in report["variants"].items():
        rows.append((name, v["file"], f"{v['max_abs_logprob_diff']:.2e}", f"{v['frame_argmax_agreement']:.4f}",
                     _fmt(v["wer"]), _fmt(v["wer_vs_pytorch"]), "yes" if v["passed"] else "NO"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
