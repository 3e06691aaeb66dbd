"""The student registry: recipes name a student by type + config, and one training loop trains them all.

Each family registers a :class:`StudentType` that knows how to build a fresh model from a config (and,
for teacher-initialised students, from the teacher), how to save it so that it reloads without the
code that built it (``speechkd_student.json`` beside the weights names the type and config), and how
to wrap it as a :class:`speechkd.evaluate.Recognizer` so ``speechkd eval`` treats it like a teacher.

    from speechkd.students import build_student, load_student, save_student
    model = build_student("conformer_ctc", {"d_model": 144, "num_layers": 8}, vocab=vocab)
    save_student(model, "exp/ctc/final")
    model = load_student("exp/ctc/final")
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from speechkd.config import ConfigError, from_dict, to_dict
from speechkd.io import atomic_write_json
from speechkd.errors import SpeechkdError

STUDENT_FILE = "speechkd_student.json"  # {"type": ..., "config": {...}} written beside every saved student

# Families are imported lazily (by module path) so `import speechkd.students` stays cheap and a family's
# optional dependencies are only needed when that family is used.
_FAMILY_MODULES = {
    "whisper": "speechkd.students.whisper",
    "conformer_ctc": "speechkd.students.conformer",
    "transformer_ctc": "speechkd.students.conformer",
    "whisper_encoder_ctc": "speechkd.students.whisper_ctc",
    "wav2vec2_ctc": "speechkd.students.wav2vec2_ctc",
    "hubert_ctc": "speechkd.students.wav2vec2_ctc",
}


class StudentError(SpeechkdError, ValueError):
    """A student that cannot be built or loaded as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class StudentType:
    """How one student family is built, saved, loaded and evaluated.

    build(cfg, teacher=None, vocab=None) -> nn.Module; the model must carry `student_type` and
    `student_config` attributes (set by build_student) so that save_student can record them.
    save(model, out_dir) writes the weights (+ tokenizer/vocabulary files) into out_dir.
    load(model_dir, cfg) -> nn.Module rebuilds from the saved files.
    recognizer(model, **kw) -> Recognizer.
    """

    name: str
    config_cls: type
    build: Callable[..., Any]
    save: Callable[[Any, Path], None]
    load: Callable[[Path, Any], Any]
    recognizer: Callable[..., Any]
    description: str = ""


_REGISTRY: dict[str, StudentType] = {}


def register_student(spec: StudentType) -> StudentType:
    _REGISTRY[spec.name] = spec
    return spec


def student_types() -> list[str]:
    return sorted(_FAMILY_MODULES)


def get_student_type(name: str) -> StudentType:
    if name not in _REGISTRY:
        module = _FAMILY_MODULES.get(name)
        if module is None:
            raise StudentError(f"unknown student type {name!r}; choose one of {student_types()}")
        importlib.import_module(module)
    return _REGISTRY[name]


def student_config(name: str, config: Mapping[str, Any] | Any | None = None) -> Any:
    """Parse a config mapping for student type `name` (unknown keys fail with the valid ones)."""
    spec = get_student_type(name)
    if config is None or isinstance(config, Mapping):
        return from_dict(spec.config_cls, dict(config or {}), where=f"student {name}")
    if not isinstance(config, spec.config_cls):
        raise ConfigError(f"student {name}: expected a {spec.config_cls.__name__} or a mapping, got {type(config).__name__}")
    return config


def build_student(name: str, config: Mapping[str, Any] | Any | None = None, *, teacher: Any = None,
                  vocab: Any = None):
    """A fresh (or teacher-initialised) student of type `name`."""
    spec = get_student_type(name)
    cfg = student_config(name, config)
    model = spec.build(cfg, teacher=teacher, vocab=vocab)
    model.student_type = name
    model.student_config = cfg
    return model


def save_student(model: Any, out_dir: str | os.PathLike) -> Path:
    """Save weights + everything needed to reload; `speechkd_student.json` is written last (it marks completion)."""
    name = getattr(model, "student_type", None)
    if name is None:
        raise StudentError("this model was not made by build_student/load_student, so its type is unknown")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    get_student_type(name).save(model, out)
    atomic_write_json(out / STUDENT_FILE, {"type": name, "config": to_dict(model.student_config)})
    return out


def read_student_file(model_dir: str | os.PathLike) -> tuple[str, dict]:
    path = Path(model_dir) / STUDENT_FILE
    if not path.is_file():
        raise StudentError(f"{model_dir} has no {STUDENT_FILE}: it is not a saved speechkd student "
                           f"(save one with save_student, or train one with `speechkd train`)")
    meta = json.loads(path.read_text())
    return meta["type"], meta.get("config", {})


def is_student_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / STUDENT_FILE).is_file()


def load_student(model_dir: str | os.PathLike):
    name, config = read_student_file(model_dir)
    spec = get_student_type(name)
    cfg = student_config(name, config)
    model = spec.load(Path(model_dir), cfg)
    model.student_type = name
    model.student_config = cfg
    return model


def student_recognizer(model_or_dir: Any, **kwargs: Any):
    """A Recognizer for a student model (or a saved student dir) — what `speechkd eval` uses."""
    model = load_student(model_or_dir) if isinstance(model_or_dir, (str, os.PathLike)) else model_or_dir
    return get_student_type(model.student_type).recognizer(model, **kwargs)
