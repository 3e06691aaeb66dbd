"""The proof that a CTranslate2 -> transformers conversion is right: greedy transcripts of the converted
model equal faster-whisper's on the same audio.

Apart from the converter (speechkd.teachers.ct2) because it decodes through the teacher built on the
converted weights (speechkd.teachers.whisper), which itself uses the converter at load time.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from speechkd.teachers.whisper import DecodeOptions, WhisperTeacher
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.guards import RAW_GREEDY


def faster_whisper_features(audios: Sequence[np.ndarray], *, num_mel_bins: int) -> np.ndarray:
    """Log-mel features exactly as faster-whisper (and openai-whisper's ``transcribe``) computes them.

    They differ from ``WhisperFeatureExtractor``'s: the mel is computed over the clip alone and the
    window is then zero-padded in the log-mel domain, whereas HF pads the waveform to 30 s first (so
    the padding is "silence" clipped at max-8 dB). On short clips that changes some greedy
    transcripts, which says nothing about the weights, so the parity check feeds both models these.
    """
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    extractor = FeatureExtractor(feature_size=num_mel_bins)
    # faster-whisper drops the frame produced by its 160-sample tail padding before pad_or_trim.
    feats = [pad_or_trim(extractor(np.asarray(a, dtype=np.float32))[..., :-1]) for a in audios]
    return np.ascontiguousarray(np.stack(feats), dtype=np.float32)


def compare_with_faster_whisper(
    teacher: WhisperTeacher,
    audios: Sequence[np.ndarray],
    *,
    language: str | None = "en",
    batch_size: int = 8,
    features: Literal["faster-whisper", "teacher"] = "faster-whisper",
    cpu_threads: int = 0,
) -> dict:
    """Greedy transcripts of the teacher's HF model vs faster-whisper on the teacher's CT2 weights.

    faster-whisper runs as a user would (``WhisperModel(..., compute_type="float32").transcribe`` with
    greedy decoding, no timestamps, no temperature fallback, no VAD). The HF model decodes greedily
    from ``features``: ``"faster-whisper"`` (default) gives it faster-whisper's own log-mel, so any
    mismatch is the conversion's fault; ``"teacher"`` uses the teacher's HF feature extractor and
    measures end-to-end agreement instead. Texts are compared after Whisper's English normalisation.
    Returns ``{"n", "n_equal", "mismatches": [{"index", "transformers", "faster_whisper"}]}``.
    """
    from faster_whisper import WhisperModel
    from whisper_normalizer.english import EnglishTextNormalizer

    if features not in ("faster-whisper", "teacher"):
        raise ValueError(f"features={features!r}; choose 'faster-whisper' or 'teacher'")
    if teacher.ct2_dir is None:
        teacher.ct2_model  # noqa: B018 - converts an HF-only teacher to CT2 once
    clips = [np.asarray(a, dtype=np.float32) for a in audios]
    # faster-whisper at temperature 0 is plain greedy decoding: compare it with the same, unguarded.
    if features == "teacher":
        hf_texts = teacher.transcribe(clips, backend="transformers", batch_size=batch_size, language=language,
                                      guards=RAW_GREEDY)
    else:
        num_mel_bins = teacher.processor.feature_extractor.feature_size
        options = DecodeOptions(language=teacher.language_code(language) if teacher.is_multilingual else None,
                                guards=RAW_GREEDY)
        hf_texts = []
        for start in range(0, len(clips), batch_size):
            batch = clips[start:start + batch_size]
            feats = faster_whisper_features(batch, num_mel_bins=num_mel_bins)
            results = teacher.generate_batch(feats, [len(c) / SAMPLE_RATE_HZ for c in batch], options, "transformers")
            hf_texts += [teacher.text(r.ids) for r in results]
    fw = WhisperModel(str(teacher.ct2_dir), device="cpu", compute_type="float32", cpu_threads=cpu_threads)
    normalise = EnglishTextNormalizer()
    mismatches = []
    for i, (clip, hf_text) in enumerate(zip(clips, hf_texts)):
        segments, _ = fw.transcribe(
            clip, beam_size=1, without_timestamps=True, language=language, temperature=0,
            condition_on_previous_text=False, vad_filter=False,
        )
        fw_text = "".join(s.text for s in segments).strip()
        if normalise(hf_text) != normalise(fw_text):
            mismatches.append({"index": i, "transformers": hf_text, "faster_whisper": fw_text})
    return {"n": len(hf_texts), "n_equal": len(hf_texts) - len(mismatches), "mismatches": mismatches}
