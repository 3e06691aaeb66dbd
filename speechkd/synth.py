"""Offline many-speaker synthetic English speech: the embedded default data of every pipeline.

espeak-ng is tiny, needs no network and runs hundreds of times faster than real time, so a machine with no
dataset can still pseudo-label, filter and distil. One espeak voice would make a one-speaker corpus, so a
*speaker* here is an explicit configuration (voice variant x rate x pitch x pitch range, optionally a fixed
noise level), listed in the config so the speaker distribution of every corpus is visible and editable.
A quarter of the default speakers' utterances are deliberately hard (fast, regional accent, whispered,
monotone, noisy): Whisper makes real errors on them, which is what label filtering is for.

Determinism is a contract (same config -> byte-identical metadata and audio), and espeak-ng fights it:
its wave generator keeps state across utterances (pitch-flutter phase, gain control, libc ``rand()`` for
breath noise), so the same sentence sounds slightly different depending on what was spoken before. We
therefore reload a private copy of the library before every utterance (about 0.5 ms) and seed both random
generators, which makes each file depend only on (text, speaker, seed): the same whatever the worker count,
scheduling or resume point. All other choices (splits, speaker assignment, noise) come from hashes of the
seed, not from a random stream, so they do not shift when numpy changes its samplers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from speechkd.config import ConfigError, save_config, to_dict
# The engine lives in speechkd.espeak; its public names stay importable from here (BACKEND_ENV only re-exported).
from speechkd.espeak import (BACKEND_ENV, ESPEAK_SAMPLE_RATE_HZ, EspeakError, check_voices,  # noqa: F401
                             espeak_version, load_engine, speak)
from speechkd.io import atomic_write_bytes, atomic_write_json, write_jsonl
from speechkd_runtime.audio import SAMPLE_RATE_HZ  # what Whisper and every student here expect

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- constants

MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8000, 48000
MIN_RATE_WPM, MAX_RATE_WPM = 80, 750  # espeak-ng clamps outside these (above ~450 it uses sonic speed-up)
MAX_PITCH = 99  # espeak pitch and pitch-range parameters are 0..99, 50 = the variant's own
MIN_SNR_DB, MAX_SNR_DB = -10.0, 60.0  # below: noise swamps speech; above: indistinguishable from clean
LEAD_PAD_S = (0.05, 0.30)  # silence added before/after speech, uniform in this range, so clips do not
TAIL_PAD_S = (0.10, 0.35)  # start on the first phone (real recordings never do) and noise has speech-free parts
PEAK_DBFS = (-12.0, -1.0)  # per-utterance loudness, uniform in dBFS: real corpora are not peak-normalised
CLIP_GUARD_PEAK = 0.99  # noise may push peaks past full scale; the whole clip is scaled down instead
MIN_AUDIBLE_RMS = 1e-4  # below this espeak produced effectively nothing (unknown script, empty text)
DEFAULT_SPLITS = {"train": 0.8, "dev": 0.1, "test": 0.1}
SPLIT_NAMES = ("train", "dev", "test")
SPLIT_SUM_TOLERANCE = 1e-6
ALLOWED_TEXT = re.compile(r"^(?=.*[^\W\d_])(?:[^\W\d_]|[ .,;:!?'\"()\-])+$")  # letters and light punctuation only
FORMAT_VERSION = 1  # bump when the same config would produce different files, so old corpora are not resumed

SENTENCES_RESOURCE = "sentences.txt"
METADATA_FILE = "metadata.jsonl"
CONFIG_FILE = "synth_config.yaml"
STATE_FILE = ".synth_state.json"  # fingerprint + complete flag: the no-op / resume / mismatch guard
AUDIO_DIR = "audio"


# -------------------------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice plus prosody, and optionally a fixed noise level.

    ``voice`` is ``language[+variant]`` (``en-us+f2``); variants are the files under
    ``espeak-ng-data/voices/!v``. ``style`` is a free label ("normal", "fast", "noisy", ...) copied into the
    metadata, so errors can be broken down by how hard a speaker was meant to be.
    """

    id: str
    voice: str
    rate: int = 175  # words per minute
    pitch: int = 50  # 0..99; 50 keeps the variant's pitch, 0 is about an octave lower, 99 almost one higher
    pitch_range: int = 50  # 0..99; 0 is monotone
    snr_db: float | None = None  # a noisy speaker always gets this much noise; None = follow the corpus setting
    weight: float = 1.0  # relative share of utterances
    style: str = "normal"

    def settings(self) -> tuple:
        return (self.voice, self.rate, self.pitch, self.pitch_range, self.snr_db)


def _spk(n: int, voice: str, rate: int, pitch: int = 50, pitch_range: int = 50, *, snr_db: float | None = None,
         style: str = "normal", weight: float = 1.0) -> Speaker:
    return Speaker(f"spk{n:02d}", voice, rate, pitch, pitch_range, snr_db, weight, style)


HARD_WEIGHT = 0.5  # 15 hard speakers x 0.5 against 20 normal x 1.0: about 27% of utterances are hard
# Chosen by measurement (Whisper tiny.en, greedy, 16 sentences per speaker): espeak at 140-165 words/min
# with the formant variants below gives 22-33% WER; faster speech, regional accents (Scottish, Caribbean,
# New York), whisper/monotone variants and 5-15 dB noise give 35-85%. 240-270 words/min is "fast" rather
# than 320+, where WER passes 80% and the audio stops being useful even as a hard case.
DEFAULT_VOICES: tuple[Speaker, ...] = (
    _spk(1, "en-us+m1", 155, 45, 50),
    _spk(2, "en-us+m3", 150, 40, 55),
    _spk(3, "en-us+m5", 165, 50, 45),
    _spk(4, "en-us+m6", 160, 50, 50),
    _spk(5, "en-us+f1", 160, 60, 50),
    _spk(6, "en-us+f2", 150, 50, 60),
    _spk(7, "en-us+m7", 145, 35, 50),
    _spk(8, "en-us+m2", 160, 50, 50),
    _spk(9, "en+m4", 150, 45, 45),
    _spk(10, "en+f3", 160, 60, 55),
    _spk(11, "en+f5", 150, 55, 50),
    _spk(12, "en+m2", 160, 50, 50),
    _spk(13, "en-gb-x-rp+m1", 155, 50, 50),
    _spk(14, "en-gb-x-rp+m6", 155, 45, 50),
    _spk(15, "en-us+klatt", 160, 50, 50),
    _spk(16, "en-us+Michael", 155, 50, 50),
    _spk(17, "en+steph", 155, 55, 50),
    _spk(18, "en+robert", 155, 45, 50),
    _spk(19, "en-us+m4", 160, 45, 50),
    _spk(20, "en-us+f3", 150, 55, 50),
    _spk(21, "en-us+m3", 240, 50, 50, style="fast", weight=HARD_WEIGHT),
    _spk(22, "en+f2", 270, 55, 50, style="fast", weight=HARD_WEIGHT),
    _spk(23, "en-us+m1", 165, 0, 10, style="low-pitch", weight=HARD_WEIGHT),
    _spk(24, "en-us+f4", 175, 99, 90, style="high-pitch", weight=HARD_WEIGHT),
    _spk(25, "en-gb-x-rp+m2", 200, 50, 0, style="monotone", weight=HARD_WEIGHT),
    _spk(26, "en+whisper", 160, 50, 50, style="whisper", weight=HARD_WEIGHT),
    _spk(27, "en-us+croak", 170, 40, 50, style="croak", weight=HARD_WEIGHT),
    _spk(28, "en-gb-scotland+m3", 165, 50, 50, style="accent", weight=HARD_WEIGHT),
    _spk(29, "en-gb-scotland+f2", 160, 60, 55, style="accent", weight=HARD_WEIGHT),
    _spk(30, "en-029+m1", 165, 45, 50, style="accent", weight=HARD_WEIGHT),
    _spk(31, "en-us-nyc+f1", 170, 55, 50, style="accent", weight=HARD_WEIGHT),
    _spk(32, "en-us+m5", 160, 50, 45, snr_db=5.0, style="noisy", weight=HARD_WEIGHT),
    _spk(33, "en+f3", 165, 60, 55, snr_db=10.0, style="noisy", weight=HARD_WEIGHT),
    _spk(34, "en-gb-x-rp+m6", 160, 45, 50, snr_db=15.0, style="noisy", weight=HARD_WEIGHT),
    _spk(35, "en-029+klatt4", 230, 60, 50, snr_db=15.0, style="fast-noisy", weight=HARD_WEIGHT),
)

_VOICE_NAME = re.compile(r"^[A-Za-z0-9-]+(\+[A-Za-z0-9_-]+)?$")


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. Every field changes the output except ``num_workers``."""

    num_utterances: int = 1000  # utterances in the whole corpus, all splits together
    seed: int = 0  # the same seed and config give the same corpus, sample for sample
    voices: tuple[Speaker, ...] = DEFAULT_VOICES  # the speaker list; shares follow each speaker's weight
    noise_snr_db: float | None = None  # noise for speakers without their own snr_db; None = clean
    noise_prob: float = 1.0  # share of those utterances that get it
    noise_color: Literal["white", "pink"] = "pink"  # spectrum of the added noise
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    min_words: int = 4  # sentences shorter than this are not used
    max_words: int = 30  # ~12 s at the slowest default rate: well inside Whisper's 30 s window
    sentences_path: str | None = None  # one sentence per line; None = the shipped public-domain/CC0 list
    sample_rate: int = SAMPLE_RATE_HZ  # Hz of the written WAVs (espeak-ng output is resampled)
    num_workers: int = 2  # processes; 0 or 1 = synthesise in this process

    def validate(self) -> None:
        if self.num_utterances < 1:
            raise ValueError(f"num_utterances must be >= 1, got {self.num_utterances}")
        if not self.voices:
            raise ValueError("voices is empty: list at least one speaker (or leave it out to use the 35 defaults)")
        seen_ids: set[str] = set()
        seen_settings: dict[tuple, str] = {}
        for s in self.voices:
            _validate_speaker(s)
            if s.id in seen_ids:
                raise ValueError(f"voices: speaker id {s.id!r} is used twice; give every speaker a unique id")
            if s.settings() in seen_settings:
                raise ValueError(f"voices: speakers {seen_settings[s.settings()]!r} and {s.id!r} have identical "
                                 "settings; change voice, rate, pitch, pitch_range or snr_db so they differ")
            seen_ids.add(s.id)
            seen_settings[s.settings()] = s.id
        if self.noise_snr_db is not None:
            _check_snr(self.noise_snr_db, "noise_snr_db")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        _split_fractions(self.splits)
        if self.min_words < 1 or self.max_words < self.min_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got min_words={self.min_words}, "
                             f"max_words={self.max_words}")
        if not MIN_SAMPLE_RATE_HZ <= self.sample_rate <= MAX_SAMPLE_RATE_HZ:
            raise ValueError(f"sample_rate must be in [{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz, "
                             f"got {self.sample_rate} (Whisper wants {SAMPLE_RATE_HZ})")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


def _check_snr(value: float, name: str) -> None:
    if not (math.isfinite(value) and MIN_SNR_DB <= value <= MAX_SNR_DB):
        raise ValueError(f"{name} = {value} dB is out of range; use {MIN_SNR_DB:g}..{MAX_SNR_DB:g} dB "
                         "(or null for clean audio)")


def _validate_speaker(s: Speaker) -> None:
    where = f"voices: speaker {s.id!r}"
    if not s.id or not re.fullmatch(r"[\w.+-]+", s.id):
        raise ValueError(f"voices: speaker id {s.id!r} must be non-empty letters, digits, '_', '.', '+' or '-'")
    if not _VOICE_NAME.match(s.voice):
        raise ValueError(f"{where}: voice {s.voice!r} is not 'language[+variant]', e.g. 'en-us+f2'")
    if not MIN_RATE_WPM <= s.rate <= MAX_RATE_WPM:
        raise ValueError(f"{where}: rate {s.rate} words/min is outside espeak-ng's {MIN_RATE_WPM}..{MAX_RATE_WPM}")
    for name, v in (("pitch", s.pitch), ("pitch_range", s.pitch_range)):
        if not 0 <= v <= MAX_PITCH:
            raise ValueError(f"{where}: {name} {v} is outside 0..{MAX_PITCH} (50 = the voice's own)")
    if s.snr_db is not None:
        _check_snr(s.snr_db, f"{where}: snr_db")
    if not (math.isfinite(s.weight) and s.weight > 0):
        raise ValueError(f"{where}: weight must be a positive number, got {s.weight}")


def _split_fractions(splits: dict) -> dict[str, float]:
    unknown = sorted(set(splits) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"splits: unknown split(s) {unknown}; use {list(SPLIT_NAMES)}")
    out = {}
    for name in SPLIT_NAMES:
        v = splits.get(name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"splits: {name} must be a fraction >= 0, got {v!r}")
        out[name] = float(v)
    total = sum(out.values())
    if abs(total - 1.0) > SPLIT_SUM_TOLERANCE:
        raise ValueError(f"splits must sum to 1, got {total:g} ({out}); e.g. train: 0.8, dev: 0.1, test: 0.1")
    if out["train"] <= 0:
        raise ValueError("splits: train must be > 0")
    return out


# -------------------------------------------------------------------------------------------- sentences


def _sentence_bytes(path: str | os.PathLike | None) -> bytes:
    if path is None:
        return resources.files("speechkd").joinpath("resources", SENTENCES_RESOURCE).read_bytes()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sentences_path {p} does not exist; give a UTF-8 file with one sentence per "
                                "line, or leave sentences_path unset to use the shipped list")
    return p.read_bytes()


def _sentence_key(text: str) -> str:
    # The same sentence with other case or punctuation is the same sentence to a listener (and to WER),
    # so it must not land in two splits.
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def load_sentences(path: str | os.PathLike | None = None, min_words: int = 4, max_words: int = 30) -> list[str]:
    """Usable prompt sentences, deduplicated, in file order.

    Sentences with digits or symbols are dropped: espeak would say "nineteen ten" or "percent" while the
    reference says "1910" or "%", and a reference that differs from what is spoken is label noise we made.
    """
    lines = _sentence_bytes(path).decode("utf-8").splitlines()
    out, seen = [], set()
    for line in lines:
        text = " ".join(line.split())
        if not text or not min_words <= len(text.split()) <= max_words or not ALLOWED_TEXT.match(text):
            continue
        key = _sentence_key(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


# ----------------------------------------------------------------------------------- hashing randomness


def _hash_int(*parts: object) -> int:
    h = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _hash_unit(*parts: object) -> float:
    return _hash_int(*parts) / 2.0**64


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integer shares of `total` proportional to `weights`, summing exactly; ties go to the earlier entry."""
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _systematic_counts(total: int, weights: list[float], offset: float) -> list[int]:
    """How many of `total` draws each weight gets by systematic sampling (evenly spaced points, one offset).

    Unlike largest remainder, which hands every unit of a small total to the biggest fractions (a
    20-utterance test split would get no hard speakers at all), every contiguous group of entries gets
    its expected share to within one, and which single entries round up depends on the seeded offset.
    """
    wsum = sum(weights)
    counts = [0] * len(weights)
    j, cum = 0, weights[0]
    for k in range(total):
        point = (k + offset) * wsum / total
        while point >= cum and j < len(weights) - 1:
            j += 1
            cum += weights[j]
        counts[j] += 1
    return counts


# ------------------------------------------------------------------------------------------ audio layer


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "pink") -> np.ndarray:
    """`audio` plus white or pink noise scaled to exactly `snr_db` (powers over the whole clip)."""
    n = audio.shape[0]
    if color == "pink":
        # 1/f power: shape white noise's spectrum by 1/sqrt(f), DC dropped so the clip stays zero-mean. The FFT
        # runs on a power-of-two length because clip lengths are arbitrary and a large prime length is ~50x slower.
        m = 1 << max(n - 1, 1).bit_length()
        spec = np.fft.rfft(rng.standard_normal(m))
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = np.inf
        noise = np.fft.irfft(spec / np.sqrt(f), m)[:n]
    elif color == "white":
        noise = rng.standard_normal(n)
    else:
        raise ValueError(f"noise color {color!r}; use 'white' or 'pink'")
    p_signal = float(np.mean(np.square(audio, dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise)))
    if p_signal <= 0 or p_noise <= 0:
        return audio.astype(np.float32)
    scale = math.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (audio.astype(np.float64) + scale * noise).astype(np.float32)


def _render(text: str, sp: Speaker, *, seed: int, snr_db: float | None, sample_rate: int,
            noise_color: str) -> np.ndarray:
    """espeak PCM -> float, resample, loudness, silence padding, noise: the whole per-utterance pipeline."""
    import soxr

    pcm = speak(text, sp, seed)
    x = pcm.astype(np.float32) / 32768.0
    if x.size == 0 or float(np.sqrt(np.mean(np.square(x)))) < MIN_AUDIBLE_RMS:
        raise EspeakError(f"espeak-ng produced no audible speech for speaker {sp.id} (voice {sp.voice!r}) on "
                          f"{text[:60]!r}; check the voice's language matches the text")
    if sample_rate != ESPEAK_SAMPLE_RATE_HZ:
        x = soxr.resample(x, ESPEAK_SAMPLE_RATE_HZ, sample_rate, quality="HQ").astype(np.float32)
    peak_db = PEAK_DBFS[0] + (PEAK_DBFS[1] - PEAK_DBFS[0]) * _hash_unit(seed, "level")
    x *= 10.0 ** (peak_db / 20.0) / max(float(np.max(np.abs(x))), 1e-9)
    lead = int(sample_rate * (LEAD_PAD_S[0] + (LEAD_PAD_S[1] - LEAD_PAD_S[0]) * _hash_unit(seed, "lead")))
    tail = int(sample_rate * (TAIL_PAD_S[0] + (TAIL_PAD_S[1] - TAIL_PAD_S[0]) * _hash_unit(seed, "tail")))
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
    if snr_db is not None:
        x = add_noise(x, snr_db, np.random.default_rng(_hash_int(seed, "noise")), noise_color)
    peak = float(np.max(np.abs(x)))
    if peak > CLIP_GUARD_PEAK:
        x *= CLIP_GUARD_PEAK / peak
    return x.astype(np.float32)


def synthesize(text: str, speaker: Speaker | str = DEFAULT_VOICES[0], *, seed: int = 0,
               sample_rate: int = SAMPLE_RATE_HZ, noise_color: str = "pink") -> np.ndarray:
    """Speak `text` as `speaker`: mono float32 in [-1, 1] at `sample_rate`.

    `speaker` is a :class:`Speaker`, the id of a default speaker (``"spk05"``) or an espeak voice name
    (``"en-us+f2"``). Noise is added when the speaker has ``snr_db``. The same arguments give the same samples.
    """
    if isinstance(speaker, str):
        by_id = {s.id: s for s in DEFAULT_VOICES}
        speaker = by_id.get(speaker) or Speaker(id=speaker.replace("+", "_"), voice=speaker)
    _validate_speaker(speaker)
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    return _render(text, speaker, seed=seed, snr_db=speaker.snr_db, sample_rate=sample_rate, noise_color=noise_color)


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ corpus


def plan_corpus(cfg: SynthConfig, sentences: list[str] | None = None) -> list[dict]:
    """The corpus as rows (without audio): which sentence, speaker, split and noise each utterance gets.

    Sentences are ordered by a seeded hash and cut into split pools in proportion to the split fractions,
    so splits never share a sentence; each split then takes its sentences in pool order (cycling only when
    asked for more utterances than it has sentences). Speakers are dealt within each split by
    systematic sampling, so even a small test split follows the configured speaker shares (and
    the normal/hard balance) to within one utterance.
    """
    if sentences is None:
        sentences = load_sentences(cfg.sentences_path, cfg.min_words, cfg.max_words)
    fractions = _split_fractions(cfg.splits)
    if not sentences:
        raise ConfigError(f"no usable sentences in {cfg.sentences_path or 'the shipped list'} with "
                          f"{cfg.min_words}..{cfg.max_words} words and no digits/symbols; widen min_words/max_words")
    ordered = sorted(sentences, key=lambda s: _hash_int(cfg.seed, "order", _sentence_key(s)))
    names = [n for n in SPLIT_NAMES if fractions[n] > 0]
    n_utts = dict(zip(names, _largest_remainder(cfg.num_utterances, [fractions[n] for n in names])))
    n_sents = dict(zip(names, _largest_remainder(len(ordered), [fractions[n] for n in names])))
    for counts in (n_utts, n_sents):  # a split asked for gets at least one, taken from the largest
        for n in names:
            if counts[n] == 0 and sum(counts.values()) > len(names):
                counts[max(counts, key=counts.get)] -= 1
                counts[n] = 1
    rows, start, index = [], 0, 0
    weights = [s.weight for s in cfg.voices]
    for split in SPLIT_NAMES:
        n, pool = n_utts.get(split, 0), ordered[start:start + n_sents.get(split, 0)]
        start += n_sents.get(split, 0)
        if n and not pool:
            raise ConfigError(f"split {split!r} needs utterances but got no sentences ({len(ordered)} usable); "
                              "add sentences or drop the split")
        counts = _systematic_counts(n, weights, _hash_unit(cfg.seed, "offset", split)) if n else [0] * len(weights)
        dealt = [sp for sp, c in zip(cfg.voices, counts) for _ in range(c)]
        slots = sorted(range(n), key=lambda i: _hash_int(cfg.seed, "deal", split, i))
        speaker_of = {slot: sp for slot, sp in zip(slots, dealt)}
        for i in range(n):
            sp = speaker_of[i]
            utt_seed = _hash_int(cfg.seed, "utt", index) >> 33  # 31 bits: exact in any JSON reader
            snr = sp.snr_db
            if snr is None and cfg.noise_snr_db is not None and _hash_unit(cfg.seed, "noisy", index) < cfg.noise_prob:
                snr = cfg.noise_snr_db
            uid = f"synth-{index:06d}"
            rows.append({
                "file_name": f"{AUDIO_DIR}/{split}/{uid}.wav", "id": uid, "text": pool[i % len(pool)],
                "speaker": sp.id, "voice": sp.voice, "rate": sp.rate, "pitch": sp.pitch,
                "pitch_range": sp.pitch_range, "style": sp.style, "snr_db": snr, "split": split,
                "seed": utt_seed,  # synthesize(text, speaker with this snr_db, seed=seed) re-creates the clip
            })
            index += 1
    return rows


def _fingerprint(cfg: SynthConfig) -> str:
    settings = {k: v for k, v in to_dict(cfg).items() if k != "num_workers"}
    blob = json.dumps({"format": FORMAT_VERSION, "config": settings,
                       "sentences": hashlib.sha256(_sentence_bytes(cfg.sentences_path)).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_state(out: Path) -> dict | None:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _config_diff(out: Path, cfg: SynthConfig) -> list[str]:
    import yaml

    try:
        old = yaml.safe_load((out / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ["(unreadable synth_config.yaml)"]
    new = to_dict(cfg)
    changed = sorted(k for k in set(old) | set(new) if k != "num_workers" and old.get(k) != new.get(k))
    return changed or ["sentences file"]


# Worker-side state: set once per process by _init_worker.
_WORKER: dict = {}


def _init_worker(out_dir: str, speakers: tuple[Speaker, ...], sample_rate: int, noise_color: str) -> None:
    _WORKER.update(out=Path(out_dir), speakers={s.id: s for s in speakers}, sample_rate=sample_rate,
                   noise_color=noise_color)
    load_engine()


def _render_utterance(row: dict) -> int:
    """Synthesise one row and write its wav atomically (a killed run leaves whole files only); returns frames."""
    sp = _WORKER["speakers"][row["speaker"]]
    audio = _render(row["text"], sp, seed=row["seed"], snr_db=row["snr_db"], sample_rate=_WORKER["sample_rate"],
                    noise_color=_WORKER["noise_color"])
    atomic_write_bytes(_WORKER["out"] / row["file_name"], _wav_bytes(audio, _WORKER["sample_rate"]))
    return audio.shape[0]


def _worker_task(row: dict) -> tuple[str, int]:
    return row["id"], _render_utterance(row)


def _remove_partial_files(out: Path) -> None:
    # atomic_write_bytes leaves `.name.XXXX.tmp` behind only if the process was killed mid-write.
    audio = out / AUDIO_DIR
    if audio.is_dir():
        for tmp in audio.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)


def synthesize_corpus(out_dir: str | os.PathLike, cfg: SynthConfig | None = None, *, progress: bool = True) -> Path:
    """Write an HF-audiofolder-style corpus to `out_dir` and return it.

    Layout: ``audio/<split>/<id>.wav`` (16-bit PCM mono), ``metadata.jsonl`` (``file_name`` relative to
    `out_dir`; a per-split copy sits in each ``audio/<split>/``), ``train/dev/test.jsonl`` manifests
    (``audio`` relative to `out_dir`) and ``synth_config.yaml``.
    Re-running a finished corpus returns at once; re-running a killed one synthesises only missing files;
    running a different config into the same folder is refused rather than mixed.
    """
    cfg = cfg or SynthConfig()
    cfg.validate()
    out = Path(out_dir)
    fingerprint = _fingerprint(cfg)
    state = _read_state(out)
    if state is not None and state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{out} holds a corpus made with a different config (differs in: "
                          f"{', '.join(_config_diff(out, cfg))}); use a new output folder or delete {out}")
    if state is not None and state.get("complete") and (out / METADATA_FILE).exists():
        log.info("%s is already complete (%s utterances); nothing to do", out, state.get("num_utterances"))
        return out

    rows = plan_corpus(cfg)
    check_voices(cfg.voices)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    atomic_write_json(out / STATE_FILE, {"fingerprint": fingerprint, "complete": False})
    _remove_partial_files(out)

    import soundfile as sf

    done = [r for r in rows if (out / r["file_name"]).exists()]
    frames = {r["id"]: sf.info(str(out / r["file_name"])).frames for r in done}
    todo = [r for r in rows if r["id"] not in frames]
    if frames:
        log.info("resuming %s: %d of %d utterances already synthesised", out, len(frames), len(rows))
    _run_todo(todo, out, cfg, frames, progress)

    meta = [{**row, "duration": round(frames[row["id"]] / cfg.sample_rate, 4)} for row in rows]
    write_jsonl(out / METADATA_FILE, meta)
    for split in SPLIT_NAMES:
        rows_s = [r for r in meta if r["split"] == split]
        manifest = [{"audio": r["file_name"], **{k: v for k, v in r.items() if k != "file_name"}} for r in rows_s]
        write_jsonl(out / f"{split}.jsonl", manifest)
        if rows_s:
            # datasets' audiofolder only reads metadata found among a split's own files, so the root file
            # alone would load without text; this copy makes load_dataset("audiofolder", data_dir=out) work.
            write_jsonl(out / AUDIO_DIR / split / METADATA_FILE,
                        [{**r, "file_name": Path(r["file_name"]).name} for r in rows_s])
    hours = sum(r["duration"] for r in meta) / 3600.0
    atomic_write_json(out / STATE_FILE, {"fingerprint": fingerprint, "complete": True, "num_utterances": len(meta),
                                         "hours": round(hours, 4), "espeak": espeak_version()})
    log.info("wrote %d utterances (%.2f h) to %s", len(meta), hours, out)
    return out


def _run_todo(todo: list[dict], out: Path, cfg: SynthConfig, frames: dict[str, int], progress: bool) -> None:
    from tqdm.auto import tqdm

    if not todo:
        return
    t0, audio_s = time.perf_counter(), 0.0
    bar = tqdm(total=len(todo), unit="utt", desc="synth", disable=not progress, dynamic_ncols=True)
    if cfg.num_workers <= 1 or len(todo) < 2:
        _init_worker(str(out), cfg.voices, cfg.sample_rate, cfg.noise_color)
        results = (_worker_task(row) for row in todo)
    else:
        results = _run_in_workers(todo, min(cfg.num_workers, len(todo)), out, cfg)
    try:
        for uid, n in results:
            frames[uid] = n
            audio_s += n / cfg.sample_rate
            bar.update(1)
            speed = audio_s / (time.perf_counter() - t0)
            bar.set_postfix_str(f"audio {audio_s:.0f} s ({audio_s / 3600:.2f} h), {speed:.0f}x RT", refresh=False)
    finally:
        results.close()  # stops worker processes now, not whenever the generator is collected
        bar.close()


def _run_in_workers(todo: list[dict], n_workers: int, out: Path, cfg: SynthConfig) -> Iterable[tuple[str, int]]:
    """Fan rows out to `python -c` worker processes speaking JSON lines over pipes.

    Not multiprocessing: spawn/forkserver re-import the caller's __main__, which respawns workers forever
    when a user script lacks an `if __name__ == "__main__"` guard, and fork would clone whatever threads
    (torch, tqdm) the caller holds. Plain subprocesses have neither problem. One feeder thread per worker
    hands out rows one at a time, so fast and slow speakers balance across workers.
    """
    import queue

    init = json.dumps({"out": str(out), "speakers": [dataclasses.asdict(s) for s in cfg.voices],
                       "sample_rate": cfg.sample_rate, "noise_color": cfg.noise_color})
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[1])  # so a source checkout works without an install
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    rows: queue.Queue = queue.Queue()
    replies: queue.Queue = queue.Queue()
    for row in todo:
        rows.put(row)
    procs = [subprocess.Popen([sys.executable, "-c", "from speechkd.synth import _worker_main; _worker_main()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
             for _ in range(n_workers)]

    def feed(proc: subprocess.Popen) -> None:
        try:
            proc.stdin.write(init + "\n")
            while True:
                try:
                    row = rows.get_nowait()
                except queue.Empty:
                    break
                proc.stdin.write(json.dumps(row) + "\n")
                line = proc.stdout.readline()
                if not line:
                    replies.put({"error": f"synthesis worker exited with status {proc.wait()} (see its stderr above)"})
                    return
                replies.put(json.loads(line))
            proc.stdin.close()
        except Exception as e:  # a dead pipe must reach the main thread, not vanish with this one
            replies.put({"error": f"synthesis worker failed: {type(e).__name__}: {e}"})

    for p in procs:
        threading.Thread(target=feed, args=(p,), daemon=True).start()
    try:
        for _ in range(len(todo)):
            msg = replies.get()
            if "error" in msg:
                raise EspeakError(msg["error"])
            yield msg["id"], msg["frames"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _worker_main() -> None:
    """Worker process: an init line, then one row per line on stdin; one reply line per row on stdout."""
    # Keep the protocol on a private descriptor so stray prints (or a library writing to fd 1) cannot corrupt it.
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        init = json.loads(sys.stdin.readline())
        speakers = tuple(Speaker(**d) for d in init["speakers"])
        _init_worker(init["out"], speakers, init["sample_rate"], init["noise_color"])
        for line in sys.stdin:
            uid, n = _worker_task(json.loads(line))
            reply.write(json.dumps({"id": uid, "frames": n}) + "\n")
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the parent is gone: nothing left to tell it
        os._exit(130)
    except Exception as e:
        try:
            reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        finally:
            os._exit(1)
