"""Hallucination guards end to end on the real bundled tiny.en: audio that makes Whisper loop or babble (silence, a
pure tone, 0.3 s of noise, music, 29.9 s of speech) ends short or empty and flagged, in every Whisper path: the
teacher on both backends (eval and Whisper students decode through it), the labeller, and the torch-free runtime."""

from __future__ import annotations

import numpy as np
import pytest

from speechkd.data import Utterance, decode, open_data
from speechkd.label import LabelConfig, pseudo_label
from speechkd_runtime.guards import WhisperGuards, text_repetition

pytestmark = pytest.mark.slow
SR = 16_000
LOOP_WORDS_PER_SECOND = 5.0  # the definition of a loop: more words than this per second of audio


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """A few bars of chords with harmonics and a beat, with no words in it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    for bar in range(int(seconds * 2)):
        root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
        span = (t >= bar / 2) & (t < (bar + 1) / 2)
        for ratio in (1.0, 1.25, 1.5):
            for h in (1, 2, 3):
                out[span] += np.sin(2 * np.pi * root * ratio * h * t[span]) / (h * 3)
    out += 0.3 * np.sin(2 * np.pi * 2 * t) * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0.95)
    return (0.2 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def hard_audio(synth_corpus) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    speech = [decode(u) for u in open_data(str(synth_corpus / "train.jsonl"))]
    long_speech = np.concatenate([np.concatenate([s, np.zeros(SR // 4, np.float32)]) for s in speech])
    assert len(long_speech) >= int(29.9 * SR), "the corpus should hold 30 s of speech"
    t = np.arange(5 * SR) / SR
    return {
        # Room tone, not digital zeros: the data layer skips an all-zero file as unusable before any decoding.
        "silence": (1e-4 * rng.standard_normal(5 * SR)).astype(np.float32),
        "tone": (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "noise_0.3s": (0.1 * rng.standard_normal(int(0.3 * SR))).astype(np.float32),
        "music": music(8.0),
        "speech_29.9s": long_speech[: int(29.9 * SR)],
    }


def assert_no_loop(name: str, audio: np.ndarray, text: str, n_tokens: int, guard: dict) -> None:
    seconds = len(audio) / SR
    assert not text_repetition(text), (name, text)
    assert len(text.split()) <= LOOP_WORDS_PER_SECOND * seconds + 1, (name, text)
    assert n_tokens <= WhisperGuards().budget(seconds, 224), (name, n_tokens)
    assert set(guard) == {"temperature", "fallbacks", "compression_ratio", "no_speech", "no_speech_prob", "cut"}
    if name == "silence":
        # Emptied, or Whisper's confident "you" on silence with a no-speech probability the default filter's
        # `no_speech` threshold drops (openai's rule empties only unlikely text).
        assert guard["no_speech"] or not text or guard["no_speech_prob"] > 0.6, (name, text, guard)


@pytest.mark.parametrize("backend", ["ctranslate2", "transformers"])
def test_teacher_paths_end_short_and_flagged(tiny_en, hard_audio, backend):
    names = list(hard_audio)
    results = tiny_en.generate_guarded([hard_audio[n] for n in names], backend=backend, batch_size=5)
    for name, r in zip(names, results):
        assert_no_loop(name, hard_audio[name], tiny_en.text(r.ids), len(r.ids), r.record())


def test_labeller_records_what_the_guards_did(tiny_en, hard_audio):
    utts = [Utterance(id=name, array=audio, sampling_rate=SR) for name, audio in hard_audio.items()]
    recs = {r["id"]: r for r in pseudo_label(utts, tiny_en, LabelConfig(batch_size=5), progress=False)}
    assert sorted(recs) == sorted(hard_audio)
    for name, rec in recs.items():
        assert_no_loop(name, hard_audio[name], rec["text"], rec["n_tokens"], rec["guard"])


@pytest.fixture(scope="module")
def tiny_en_onnx(tiny_en, tmp_path_factory):
    from speechkd.onnx_export.whisper_onnx import export_whisper

    return export_whisper(tiny_en.hf_dir, tmp_path_factory.mktemp("tiny_en_onnx") / "model", quantize=())


def test_runtime_path_ends_short_and_flagged(tiny_en_onnx, hard_audio):
    from speechkd_runtime.whisper import WhisperModel

    model = WhisperModel(tiny_en_onnx, num_threads=2)
    names = list(hard_audio)
    clips = [hard_audio[n] for n in names]
    results = model.generate_guarded(np.stack([model.features(a) for a in clips]),
                                     seconds=[len(a) / SR for a in clips])
    for name, r in zip(names, results):
        assert_no_loop(name, hard_audio[name], model.decode(r.ids), len(r.ids), r.record())
