"""speechkd.synth: the offline espeak-ng corpus every pipeline falls back on.

Small corpora (a dozen utterances, ~0.2 s of synthesis each run) keep every test to a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkd import espeak, synth
from speechkd.config import ConfigError, load_config
from speechkd.io import read_jsonl
from speechkd.synth import (DEFAULT_VOICES, EspeakError, Speaker, SynthConfig, add_noise, check_voices,
                            load_sentences, plan_corpus, synthesize, synthesize_corpus)

TEXT = "The prisoners fished for alms or food at the gratings."


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.sum(clean**2) / np.sum((noisy.astype(np.float64) - clean) ** 2))


def _small(**kw) -> SynthConfig:
    base = dict(num_utterances=12, seed=3, num_workers=0)
    base.update(kw)
    return SynthConfig(**base)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(tmp_path_factory.mktemp("synth") / "corpus", _small(num_utterances=20), progress=False)


# ------------------------------------------------------------------------------------------------ speakers


def test_default_speakers_are_many_distinct_and_include_hard_ones():
    cfg = SynthConfig()
    settings = {s.settings() for s in cfg.voices}
    assert len(settings) >= 20 and len(cfg.voices) == len(settings)
    assert len({s.voice for s in cfg.voices}) >= 15
    styles = {s.style for s in cfg.voices}
    assert {"fast", "noisy", "low-pitch", "high-pitch", "whisper"} <= styles
    hard_share = sum(s.weight for s in cfg.voices if s.style != "normal") / sum(s.weight for s in cfg.voices)
    assert 0.15 < hard_share < 0.4
    check_voices(cfg.voices)  # every default voice and variant exists in the shipped espeak-ng data


def test_unknown_variant_is_named():
    with pytest.raises(EspeakError, match="nosuchvariant"):
        check_voices([Speaker("x", "en+nosuchvariant")])


# --------------------------------------------------------------------------------------------------- audio


def test_synthesize_gives_sane_16k_mono_float():
    audio = synthesize(TEXT, "spk05", seed=1)
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.shape[0] / 16000
    assert 2.0 < seconds < 6.0  # 10 words at 175 words/min is ~3.4 s, plus a little silence
    assert 0.05 < np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.005  # not silent


def test_synthesize_is_deterministic_and_independent_of_history():
    a = synthesize(TEXT, "spk26", seed=7)  # whisper variant: uses espeak's random breath noise
    synthesize("Something else entirely, spoken fast.", "spk22", seed=2)
    b = synthesize(TEXT, "spk26", seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthesize(TEXT, "spk26", seed=8))


def test_speed_and_pitch_settings_take_effect():
    slow = synthesize(TEXT, Speaker("slow", "en-us+m3", rate=120), seed=1)
    fast = synthesize(TEXT, Speaker("fast", "en-us+m3", rate=360), seed=1)
    assert fast.shape[0] < 0.6 * slow.shape[0]


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_add_noise_hits_requested_snr(color, snr):
    clean = synthesize(TEXT, "spk01", seed=1)
    noisy = add_noise(clean, snr, np.random.default_rng(0), color)
    assert abs(_snr_db(clean, noisy) - snr) < 0.01


def test_corpus_noise_is_at_requested_snr(tmp_path):
    out = synthesize_corpus(tmp_path / "c", _small(num_utterances=6, noise_snr_db=10.0,
                                                   voices=DEFAULT_VOICES[:3]), progress=False)
    rows = list(read_jsonl(out / "metadata.jsonl"))
    assert all(r["snr_db"] == 10.0 for r in rows)
    speakers = {s.id: s for s in DEFAULT_VOICES}
    for r in rows:
        noisy, rate = sf.read(out / r["file_name"], dtype="float32")
        clean = synthesize(r["text"], speakers[r["speaker"]], seed=r["seed"])
        assert rate == 16000 and clean.shape == noisy.shape
        assert abs(_snr_db(clean, noisy) - 10.0) < 0.2  # int16 rounding and the clip guard cost a little


# -------------------------------------------------------------------------------------------------- corpus


def test_corpus_layout(corpus):
    cfg = load_config(SynthConfig, corpus / "synth_config.yaml")
    assert cfg == _small(num_utterances=20)
    meta = list(read_jsonl(corpus / "metadata.jsonl"))
    assert len(meta) == 20
    keys = {"file_name", "id", "text", "speaker", "voice", "rate", "pitch", "snr_db", "split", "duration"}
    assert all(keys <= set(r) for r in meta)
    assert len({r["id"] for r in meta}) == 20
    for r in meta:
        info = sf.info(str(corpus / r["file_name"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
    counts = {}
    for split in ("train", "dev", "test"):
        rows = list(read_jsonl(corpus / f"{split}.jsonl"))
        counts[split] = len(rows)
        for r in rows:
            assert r["split"] == split and (corpus / r["audio"]).is_file()
        per_split = list(read_jsonl(corpus / "audio" / split / "metadata.jsonl"))
        assert [r["id"] for r in per_split] == [r["id"] for r in rows]
        assert all((corpus / "audio" / split / r["file_name"]).is_file() for r in per_split)
    assert counts == {"train": 16, "dev": 2, "test": 2}


def _split_keys(rows) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for r in rows:
        keys.setdefault(r["split"], set()).add(synth._sentence_key(r["text"]))
    return keys


def test_splits_share_no_sentence(corpus, tmp_path):
    keys = _split_keys(read_jsonl(corpus / "metadata.jsonl"))
    assert not (keys["train"] & keys["dev"] or keys["train"] & keys["test"] or keys["dev"] & keys["test"])
    # Also when sentences must be reused (more utterances than sentences): reuse stays inside a split,
    # and a case/punctuation variant of a sentence counts as the same sentence.
    lines = [f"this is sentence number {w} for the test" for w in "one two three four five six seven eight".split()]
    path = tmp_path / "s.txt"
    path.write_text("\n".join(lines + ["This is sentence number one, for the test!"]) + "\n")
    rows = plan_corpus(_small(num_utterances=40, sentences_path=str(path)))
    keys = _split_keys(rows)
    assert sum(len(k) for k in keys.values()) == 8
    assert not (keys["train"] & keys["dev"] or keys["train"] & keys["test"] or keys["dev"] & keys["test"])


def test_same_seed_same_bytes_whatever_the_worker_count(corpus, tmp_path):
    again = synthesize_corpus(tmp_path / "again", dataclasses.replace(_small(num_utterances=20), num_workers=2),
                              progress=False)
    a, b = _tree_bytes(corpus), _tree_bytes(again)
    a.pop("synth_config.yaml"), b.pop("synth_config.yaml")  # records num_workers, which changes nothing else
    assert a == b
    other = plan_corpus(_small(num_utterances=20, seed=4))
    assert [r["text"] for r in other] != [r["text"] for r in read_jsonl(corpus / "metadata.jsonl")]


def test_resume_after_kill_and_noop_when_done(corpus, tmp_path, monkeypatch):
    calls = []
    real = synth._render_utterance

    def dies_after_five(row):
        if len(calls) == 5:
            raise KeyboardInterrupt  # what a Ctrl-C or kill leaves behind
        calls.append(row["id"])
        return real(row)

    out = tmp_path / "c"
    cfg = _small(num_utterances=20)
    monkeypatch.setattr(synth, "_render_utterance", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(out, cfg, progress=False)
    assert not (out / "metadata.jsonl").exists() and len(list(out.rglob("*.wav"))) == 5
    (out / "audio" / "train" / ".synth-000099.wav.abc.tmp").write_bytes(b"torn")  # a write killed midway
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}

    calls.clear()
    monkeypatch.setattr(synth, "_render_utterance", lambda row: (calls.append(row["id"]), real(row))[1])
    synthesize_corpus(out, cfg, progress=False)
    assert len(calls) == 15  # only the missing ones
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert not list(out.rglob("*.tmp"))
    assert _tree_bytes(out) == _tree_bytes(corpus)

    calls.clear()
    synthesize_corpus(out, cfg, progress=False)
    assert calls == []


def test_other_config_into_same_folder_is_refused(corpus):
    with pytest.raises(ConfigError, match=r"different config.*seed"):
        synthesize_corpus(corpus, _small(num_utterances=20, seed=99), progress=False)


# -------------------------------------------------------------------------------------------------- config


def test_yaml_config_with_explicit_speakers(tmp_path):
    path = tmp_path / "synth.yaml"
    path.write_text(textwrap.dedent("""\
        num_utterances: 50
        noise_snr_db: 20
        noise_prob: 0.5
        splits: {train: 0.9, test: 0.1}
        voices:
          - {id: a, voice: en-us+f2, rate: 200, pitch: 70}
          - {id: b, voice: en+m3, rate: 300, snr_db: 5, weight: 0.5, style: fast-noisy}
        """))
    cfg = load_config(SynthConfig, path)
    assert cfg.voices[1] == Speaker("b", "en+m3", rate=300, snr_db=5.0, weight=0.5, style="fast-noisy")
    rows = plan_corpus(cfg)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["speaker"] == "b" for r in rows) == pytest.approx(50 / 3, abs=1)
    assert {r["snr_db"] for r in rows if r["speaker"] == "b"} == {5.0}
    assert {r["snr_db"] for r in rows if r["speaker"] == "a"} == {None, 20.0}


@pytest.mark.parametrize("yaml_text, message", [
    ("splits: {train: 0.8, dev: 0.1}", "sum to 1"),
    ("splits: {train: 0.8, dev: 0.1, eval: 0.1}", "unknown split"),
    ("voices: []", "voices is empty"),
    ("noise_snr_db: 100", "out of range"),
    ("noise_prob: 1.5", "noise_prob"),
    ("min_words: 10\nmax_words: 5", "min_words <= max_words"),
    ("num_utterances: 0", "num_utterances"),
    ("sample_rate: 1000", "sample_rate"),
    ("voices: [{id: a, voice: 'en us'}]", r"not 'language\[\+variant\]'"),
    ("voices: [{id: a, voice: en, rate: 2000}]", "rate 2000"),
    ("voices: [{id: a, voice: en, pitch: 120}]", "pitch 120"),
    ("voices: [{id: a, voice: en}, {id: a, voice: en+f2}]", "used twice"),
    ("voices: [{id: a, voice: en}, {id: b, voice: en}]", "identical settings"),
    ("voices: [{id: a, voice: en, weight: 0}]", "weight"),
    ("voices: [{id: a, voice: en, snr_db: -40}]", "out of range"),
    ("voice: en", "unknown key"),
])
def test_bad_config_is_rejected_with_a_clear_message(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(SynthConfig, path)


def test_shipped_sentences_are_clean():
    sentences = load_sentences()
    assert len(sentences) > 15000
    assert not any(ch.isdigit() for s in sentences for ch in s)
    assert all(4 <= len(s.split()) <= 30 for s in sentences)


def test_missing_sentences_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentences_path"):
        plan_corpus(_small(sentences_path=str(tmp_path / "nope.txt")))


# -------------------------------------------------------------------------------------------------- engines


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(espeak, "_ENGINE", None)  # the engine lives in speechkd.espeak
    monkeypatch.setenv(synth.BACKEND_ENV, "binary")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EspeakError, match="pip install espeakng-loader"):
        synthesize(TEXT)


def test_binary_fallback_runs_the_command(monkeypatch, tmp_path):
    # A stand-in `espeak-ng` that logs its arguments and writes a tone: checks the command line we build
    # and that its wav is read back, resampled and post-processed like the library's output.
    log = tmp_path / "args.json"
    exe = tmp_path / "espeak-ng"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        import numpy as np, soundfile as sf
        args = sys.argv[1:]
        if args[0] in ("--version", "--help"):
            print("eSpeak NG text-to-speech: 1.52 (fake)" if args[0] == "--version" else "-P <integer> pitch range")
            sys.exit(0)
        text = sys.stdin.read()
        json.dump({{"args": args, "text": text}}, open({str(log)!r}, "w"))
        t = np.arange(22050) / 22050
        sf.write(args[args.index("-w") + 1], (0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16), 22050)
        """))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(espeak, "_ENGINE", None)  # the engine lives in speechkd.espeak
    monkeypatch.setenv(synth.BACKEND_ENV, "binary")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    audio = synthesize("-- a text that looks like a flag", Speaker("x", "en-us+f2", rate=200, pitch=60, pitch_range=30))
    called = json.loads(log.read_text())
    assert called["text"] == "-- a text that looks like a flag"
    args = called["args"]
    assert args[args.index("-v") + 1] == "en-us+f2" and args[args.index("-s") + 1] == "200"
    assert args[args.index("-p") + 1] == "60" and args[args.index("-P") + 1] == "30"
    assert 1.0 < audio.shape[0] / 16000 < 1.8 and np.abs(audio).max() > 0.1
    assert synth.espeak_version().startswith("binary")
