"""Distillation methods ("tasks") that plug into the one training loop in `speechkd.train`.

A task module defines a frozen dataclass `Config` (its options, read from `method_config` in the run
YAML) and `build(run, run_dir, model) -> Task`; optionally `make_vocab(run, records)` when the student
needs a vocabulary built from the training labels, and `read_records(run)` when its training data is not a
labels JSONL (audio only). See `speechkd.train.Task` for the object's methods.
"""

from __future__ import annotations

import importlib
from types import ModuleType

METHODS = {
    "whisper_kd": "speechkd.tasks.whisper_kd",  # Distil-Whisper: KL + pseudo-label CE, smaller decoder
    "ctc": "speechkd.tasks.ctc",  # CTC students on pseudo-label text
    "layerwise": "speechkd.tasks.layerwise",  # student layers onto teacher layers (DistilHuBERT), no text needed
}


def method_module(name: str) -> ModuleType:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])
