"""Export a CTC student to ONNX (fp32 + int8) in a directory the torch-free runtime and sherpa-onnx can load.

    from speechkd.onnx_export import ExportConfig, export_ctc
    export_ctc("exp/ctc/final", "exp/ctc/onnx", ExportConfig(quantize=("dynamic",)))

(`speechkd export` picks this exporter or the Whisper one and verifies: speechkd.onnx_export.api.export_student.)

The directory holds:
  model.onnx                 fp32 graph: x [B, T, D] float32 (or [B, S] samples), x_lens [B] int64 ->
                             log_probs [B, T', V] float32 (log-softmaxed), log_probs_len [B] int64;
                             batch and time axes are dynamic, V is static (sherpa-onnx reads it from the shape)
  model.int8.onnx            dynamic int8 (weights int8, activations quantised on the fly)
  model.int8-static.onnx     static int8, QDQ, calibrated on a manifest
  tokens.txt                 "symbol id" per line, blank written "<blk>" (sherpa-onnx's format)
  config.json                model type, vocab size, blank id, sample rate, frontend (feature settings),
                             subsampling/frame rate, file names, and which model the runtime loads by default
  lm.arpa                    (with --lm) a word n-gram; config.json's `decoding` then holds the beam-search
                             settings, and the runtime decodes with it by default

The same facts go into each ONNX file's metadata_props, so a lone .onnx file still describes itself.

Why the TorchScript exporter (`dynamo=False`): torch 2.13 defaults to the torch.export-based exporter,
which needs `onnxscript` and specialises shapes unless every dynamic dimension is declared through
`dynamic_shapes` and survives guards in the model code (masking, subsampling arithmetic); the
TorchScript tracer records shape arithmetic as graph ops and takes the familiar `dynamic_axes`.
Every export is checked on a batch whose size and lengths differ from the traced example, so a
dimension that got frozen into a constant fails the export instead of reaching a device.

sherpa-onnx: an fbank student matches sherpa-onnx's "zipformer_ctc" offline model contract exactly
(inputs (features [N, T, C], features_length int64 [N]), outputs (log_probs [N, T', V] with static V,
log_probs_length int64), kaldi-native-fbank features with sherpa's defaults, tokens.txt with <blk>),
so `sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model=..., tokens=...)` runs it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechkd.io import atomic_write_bytes, atomic_write_json, atomic_write_text
# ExportConfig and ExportError are defined in common.py and stay importable from here.
from speechkd.onnx_export.common import ExportConfig, ExportError, max_abs_diff, torch_log_probs
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.beam import BeamSearchOptions

log = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILES = {"dynamic": "model.int8.onnx", "static": "model.int8-static.onnx"}
TOKENS_FILE = "tokens.txt"
LM_FILE = "lm.arpa"
CONFIG_FILE = "config.json"
INPUT_NAMES = ("x", "x_lens")
OUTPUT_NAMES = ("log_probs", "log_probs_len")
BLANK_SYMBOL = "<blk>"  # sherpa-onnx finds the blank by this name
CTC_STUDENT_FILES = ("speechkd_student.json", "config.json", "tokens.txt", "model.safetensors")  # a saved CTC student
# config.json keys that must agree with the loaded model (the rest are informational).
CHECKED_KEYS = ("model_type", "student_type", "vocab_size", "blank_id", "sample_rate", "subsampling_factor",
                "frontend")
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------- loading


def load_ctc_student(student_dir: str | os.PathLike):
    """Load a saved CTC student after checking its files and that config.json describes the model."""
    from speechkd.students import StudentError, load_student, read_student_file
    from speechkd.students.ctc import ctc_model_config

    d = Path(student_dir)
    if not d.is_dir():
        raise ExportError(f"{d} is not a directory; pass a saved student dir (e.g. exp/run/final)")
    missing = [f for f in CTC_STUDENT_FILES if not (d / f).is_file()]
    if missing:
        raise ExportError(f"{d} is missing {', '.join(missing)}: not a complete saved CTC student "
                          f"(save it with speechkd.students.save_student, or re-run training)")
    try:
        kind, _ = read_student_file(d)
        model = load_student(d)
    except (StudentError, FileNotFoundError, OSError) as e:
        raise ExportError(f"cannot load the student in {d}: {e}") from e
    if not hasattr(model, "vocab") or not hasattr(model, "frontend"):
        raise ExportError(f"{d} holds a {kind!r} student, which is not a CTC model; "
                          f"`speechkd export` handles CTC and Whisper students")
    try:
        saved = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{d / CONFIG_FILE}: not valid JSON ({e}); re-save the student") from e
    actual = ctc_model_config(model)
    for key in CHECKED_KEYS:
        if key in actual and saved.get(key) != actual[key]:
            raise ExportError(f"{d / CONFIG_FILE} does not match the model in {d}: {key} is {saved.get(key)!r} "
                              f"in the file but {actual[key]!r} in the weights/vocabulary; the files come from "
                              f"different runs — re-save the student with save_student")
    student_tokens = d / TOKENS_FILE
    from speechkd.vocab import read_tokens

    if read_tokens(student_tokens) != list(model.vocab.tokens):
        raise ExportError(f"{student_tokens} does not match the vocabulary the model was loaded with; re-save it")
    return model


# ------------------------------------------------------------------------------------------- export


class OnnxGraph(torch.nn.Module):
    """The traced module: the student with its outputs cast to the dtypes the runtime contract fixes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, out_lens = self.inner(x, x_lens)
        return log_probs.float(), out_lens.to(torch.int64)


def _example_batch(frontend: dict, seconds: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of model inputs made from noise by the real front end (so D and lengths are right)."""
    from speechkd_runtime.ctc import pad_value_for
    from speechkd_runtime.features import compute_features, pad_batch

    rng = np.random.default_rng(seed)
    sr = int(frontend.get("sample_rate", SAMPLE_RATE_HZ))
    feats = [compute_features(frontend, (0.1 * rng.standard_normal(int(s * sr))).astype(np.float32)) for s in seconds]
    return pad_batch(feats, pad_value_for(frontend))


def _min_input_frames(model) -> int:
    """Shortest input (frames, or samples for waveform models) that yields one output frame.

    The runtime transcribes shorter pieces as "" instead of feeding the graph an input its convolutions reject.
    """
    lengths = getattr(model, "output_lengths", None)
    if lengths is None:
        return 1
    for n in range(1, 4097):
        if int(lengths(torch.tensor([n], dtype=torch.int64))[0]) >= 1:
            return n
    raise ExportError("the model produces no output frame for inputs up to 4096 frames; check output_lengths")


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def write_tokens(tokens: list[str], blank_id: int, path: Path) -> None:
    """tokens.txt as sherpa-onnx reads it: whitespace separates symbol and id, so symbols may not contain any."""
    lines = []
    for i, sym in enumerate(tokens):
        if i == blank_id:
            sym = BLANK_SYMBOL
        if not sym or any(ch.isspace() for ch in sym):
            raise ExportError(f"token {i} ({sym!r}) is empty or contains whitespace; tokens.txt cannot hold it "
                              f"(spaces are written as '▁' by speechkd.vocab)")
        lines.append(f"{sym} {i}\n")
    atomic_write_text(path, "".join(lines))


def _sherpa_info(frontend: dict) -> dict:
    if frontend.get("kind") == "fbank" and int(frontend.get("sample_rate", SAMPLE_RATE_HZ)) == SAMPLE_RATE_HZ:
        dim = int(frontend.get("num_mel_bins", 80))
        return {"compatible": True, "model_type": "zipformer_ctc",
                "usage": f"sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model='model.onnx', "
                         f"tokens='tokens.txt', feature_dim={dim})"}
    return {"compatible": False,
            "reason": f"sherpa-onnx computes kaldi fbank features itself; this model uses the "
                      f"{frontend.get('kind')!r} front end"}


def export_metadata(cfg: dict) -> dict[str, Any]:
    """What goes into every ONNX file's metadata_props (scalars as strings, nested values as JSON)."""
    keys = ("model_type", "student_type", "vocab_size", "blank_id", "sample_rate", "subsampling_factor",
            "feature_dim", "frame_shift_ms", "output_frame_rate_hz", "frontend")
    meta = {k: (str(cfg[k]) if not isinstance(cfg[k], (dict, list)) else cfg[k]) for k in keys if k in cfg}
    meta["exported_by"] = "speechkd"
    meta["format_version"] = str(FORMAT_VERSION)
    meta["comment"] = "CTC: x [B,T,D] float32, x_lens [B] int64 -> log_probs [B,T',V], log_probs_len [B]"
    return meta


def export_ctc(model_or_dir: Any, out_dir: str | os.PathLike, config: ExportConfig = ExportConfig()) -> dict:
    """Export a CTC student (model or saved dir) to `out_dir`; returns the config.json written.

    Verification on data (config.data) is separate: see speechkd.onnx_export.api.export_student and .verify.
    """
    from speechkd.students.ctc import ctc_model_config
    from speechkd_runtime.features import feature_dim, frame_rate_hz

    config.validate()
    source = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        source = str(Path(model_or_dir).resolve())
        model = load_ctc_student(model_or_dir)
    else:
        model = model_or_dir
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(ctc_model_config(model))
    frontend = dict(base["frontend"])
    fps = frame_rate_hz(frontend)
    cfg = {
        **base,
        "format": "speechkd-onnx",
        "format_version": FORMAT_VERSION,
        "feature_dim": feature_dim(frontend),
        "frame_shift_ms": 1000.0 / fps,
        "output_frame_rate_hz": fps / int(base["subsampling_factor"]),
        "tokens": TOKENS_FILE,
        "input_names": list(INPUT_NAMES),
        "output_names": list(OUTPUT_NAMES),
        "opset": config.opset,
        "onnx": {"fp32": FP32_FILE},
        "default_model": FP32_FILE,
        "min_input_frames": _min_input_frames(model),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "source_student_dir": source,
        "sherpa_onnx": _sherpa_info(frontend),
    }
    if len(model.vocab.tokens) != int(cfg["vocab_size"]):
        raise ExportError(f"vocabulary has {len(model.vocab.tokens)} tokens but the model config says "
                          f"vocab_size {cfg['vocab_size']}")
    write_tokens(list(model.vocab.tokens), int(cfg["blank_id"]), out / TOKENS_FILE)
    if config.lm is not None:
        cfg["decoding"] = ship_lm(config.lm, config.beam_options(), out)

    fp32 = out / FP32_FILE
    graph = OnnxGraph(model).eval()
    x, x_lens = _example_batch(frontend, [2.0, 1.5])
    tmp = out / f".{FP32_FILE}.tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            graph, (torch.from_numpy(x), torch.from_numpy(x_lens)), str(tmp), dynamo=False,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), opset_version=config.opset,
            dynamic_axes={"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "log_probs": {0: "N", 1: "T_out"},
                          "log_probs_len": {0: "N"}},
            do_constant_folding=True,
        )
    os.replace(tmp, fp32)
    meta = export_metadata(cfg)
    _write_metadata(fp32, meta)
    check_dynamic_axes(graph, fp32, frontend, config.tolerance)

    for mode in config.quantize:
        from speechkd.onnx_export.quantize import quantize_model

        path = out / INT8_FILES[mode]
        quantize_model(fp32, path, mode, frontend=frontend, calibration=config.calibration,
                       calibration_size=config.calibration_size)
        _write_metadata(path, {**meta, "quantization": f"int8-{mode}"})
        cfg["onnx"][f"int8-{mode}"] = INT8_FILES[mode]
    atomic_write_json(out / CONFIG_FILE, cfg)
    log.info("exported %s to %s (%s)", cfg["student_type"], out, ", ".join(cfg["onnx"].values()))
    return cfg


def ship_lm(lm: str | os.PathLike, options: BeamSearchOptions, out: Path) -> dict:
    """Copy the ARPA LM into the export as lm.arpa (atomically) and return config.json's `decoding` section."""
    import dataclasses

    from speechkd_runtime.ngram import NgramLM

    NgramLM(lm)  # refuse an unreadable file now rather than on the device
    atomic_write_bytes(out / LM_FILE, Path(lm).read_bytes())
    return {"lm": LM_FILE, **dataclasses.asdict(options)}


def check_dynamic_axes(graph, onnx_path: Path, frontend: dict, tolerance: float) -> float:
    """Run a batch of a different size and lengths than the traced one through PyTorch and onnxruntime.

    A traced model can silently freeze a shape into a constant; this catches it at export time.
    """
    import onnxruntime as ort

    x, x_lens = _example_batch(frontend, [0.7, 3.1, 1.9], seed=1)
    ref, ref_lens = torch_log_probs(graph, x, x_lens)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    lp, lens = sess.run(None, {INPUT_NAMES[0]: x, INPUT_NAMES[1]: x_lens})
    if not np.array_equal(lens, ref_lens):
        raise ExportError(f"{onnx_path}: output lengths {lens.tolist()} differ from PyTorch's {ref_lens.tolist()} "
                          f"on a batch of new shape — a length computation was frozen during tracing")
    diff = max_abs_diff(ref, [lp[i, : int(n)] for i, n in enumerate(lens)])
    if not diff <= tolerance:
        raise ExportError(f"{onnx_path}: ONNX and PyTorch log-probs differ by {diff:.3g} (> tolerance {tolerance}) "
                          f"on a batch of new shape; the graph is not faithful to the model")
    return diff
