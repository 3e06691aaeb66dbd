"""speechkd_runtime: run speechkd students exported to ONNX on a device — numpy, onnxruntime and soundfile only.

    import speechkd_runtime
    text = speechkd_runtime.transcribe("exported_model_dir", "speech.wav")
    text = speechkd_runtime.transcribe("exported_model_dir", samples, sample_rate=44100)

or from a shell: `python -m speechkd_runtime MODEL_DIR a.wav b.wav --num-threads 2`.

This package never imports torch or speechkd: it is what ships to the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioError, load_audio, resample
from .ctc import CtcModel, ModelDirError, read_config

__all__ = ["transcribe", "load_model", "CtcModel", "AudioError", "ModelDirError", "resample", "load_audio"]

_CACHE: dict[tuple, Any] = {}  # loaded sessions, so repeated transcribe() calls do not reload the model


def load_model(model_dir: str | os.PathLike, **kwargs: Any) -> Any:
    """The recogniser for an export directory, chosen by config.json's model_type ("ctc" or "whisper")."""
    model_type = read_config(model_dir).get("model_type")
    if model_type == "ctc":
        return CtcModel(model_dir, **kwargs)
    if model_type == "whisper":
        raise ModelDirError("Whisper exports are loaded by speechkd_runtime.whisper; use speechkd_runtime.transcribe")
    raise ModelDirError(f"{Path(model_dir) / 'config.json'}: unknown model_type {model_type!r}; expected 'ctc' or 'whisper'")


def transcribe(model_dir: str | os.PathLike, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None,
               **kwargs: Any) -> str:
    """Transcript of one file path, or of a float32 array with its sample_rate (resampled as needed).

    kwargs go to the model (e.g. num_threads=2, model_file="model.onnx" to force fp32).
    """
    config = read_config(model_dir)
    model_type = config.get("model_type")
    if model_type == "whisper":
        from . import whisper  # written separately; imported only when a Whisper export is used

        return whisper.transcribe(model_dir, audio, sample_rate=sample_rate, **kwargs)
    if model_type != "ctc":
        raise ModelDirError(f"{Path(model_dir) / 'config.json'}: unknown model_type {model_type!r}; "
                            f"expected 'ctc' or 'whisper'")
    key = (os.fspath(Path(model_dir).resolve()), repr(sorted(kwargs.items())))
    model = _CACHE.get(key)
    if model is None:
        model = _CACHE[key] = CtcModel(model_dir, **kwargs)
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is read from the file; pass it only with an array")
        return model.transcribe_files([audio])[0]
    if sample_rate is None:
        raise AudioError(f"an array was given without its sample rate; pass sample_rate= "
                         f"(this model expects {model.sample_rate} Hz)")
    return model.transcribe([np.asarray(audio, dtype=np.float32)], sample_rate=sample_rate)[0]
