"""What every exporter and the verifier share: the error class, the export settings, and two small helpers.

Kept apart from ctc.py, whisper_onnx.py and verify.py so each of them can use these without importing
another exporter (the choice of exporter for a student lives in speechkd.onnx_export.api). Light to
import: torch is imported only inside torch_log_probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkd.errors import SpeechkdError
from speechkd.lm import BeamSearchFields

QUANT_MODES = ("dynamic", "static")


class ExportError(SpeechkdError, ValueError):
    """A model or directory that cannot be exported as asked; the message names the file and the fix.

    One error class for every exporter (CTC and Whisper), so the CLI reports them all the same way.
    """


@dataclass(frozen=True)
class ExportConfig(BeamSearchFields):
    quantize: tuple[str, ...] = ("dynamic",)  # any of "dynamic", "static"; () exports fp32 only
    opset: int = 17  # ONNX opset of the graphs (13..21)
    calibration: str | None = None  # manifest (or audio folder / dataset) for static int8 calibration
    calibration_size: int = 32  # utterances used for calibration
    data: str | None = None  # manifest to verify on after export (PyTorch vs ONNX log-probs and WER)
    max_utterances: int | None = 200  # verification subset size (None: all)
    tolerance: float = 1e-3  # max |log-prob difference| allowed between PyTorch and ONNX fp32
    max_wer_increase: float = 1.0  # WER points an int8 model may lose vs PyTorch before verification fails
    batch_size: int = 8  # utterances per batch during verification and calibration
    num_threads: int | None = None  # onnxruntime threads during verification
    # BeamSearchFields: `lm` is shipped as lm.arpa and the runtime then beam-searches with it by default.

    def validate(self) -> None:
        bad = [m for m in self.quantize if m not in QUANT_MODES]
        if bad:
            raise ValueError(f"quantize: unknown mode(s) {bad}; choose from {list(QUANT_MODES)}")
        if "static" in self.quantize and not self.calibration:
            raise ValueError("static int8 needs calibration audio: pass --calibration MANIFEST "
                             "(or drop 'static' from --quantize)")
        if not 13 <= self.opset <= 21:
            raise ValueError(f"opset {self.opset} is outside the supported range 13..21")
        if self.calibration_size < 1 or self.batch_size < 1:
            raise ValueError("calibration_size and batch_size must be >= 1")
        if self.tolerance <= 0 or self.max_wer_increase < 0:
            raise ValueError("tolerance must be > 0 and max_wer_increase >= 0")
        if self.lm is not None:
            if not Path(self.lm).is_file():
                raise ValueError(f"lm {self.lm} does not exist; build one with `speechkd lm --text LABELS --out lm.arpa`")
            self.beam_options().validate()


def torch_log_probs(model, batch: np.ndarray, lens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """A CTC model's log-probs on a padded batch, cut to each item's valid frames, and the output lengths."""
    import torch

    with torch.inference_mode():
        log_probs, out_lens = model(torch.from_numpy(batch), torch.from_numpy(lens))
    lp, ol = log_probs.float().numpy(), out_lens.numpy().astype(np.int64)
    return [lp[i, : int(ol[i])] for i in range(len(ol))], ol


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| over the valid frames of every item; inf when any lengths differ."""
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst
