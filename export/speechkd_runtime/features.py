"""Feature front ends shared by training (speechkd) and the on-device runtime: numpy only.

One implementation computes the features a CTC student is trained on and the features it sees when
deployed, so "train/serve skew" in the front end cannot happen. Three kinds, named by the `frontend`
dict saved in every exported model's config.json:

    {"kind": "fbank", "sample_rate": 16000, "num_mel_bins": 80}
        Kaldi log-mel filterbank, identical to kaldi-native-fbank as sherpa-onnx configures it by default
        (sherpa-onnx/csrc/features.h, FeatureExtractorConfig; offline-stream.cc copies these into
        knf::FbankOptions): samp_freq 16000, frame_length_ms 25, frame_shift_ms 10, dither 0,
        snip_edges false, remove_dc_offset true, window "povey", low_freq 20, high_freq -400
        (= Nyquist - 400), is_librosa false, normalize_samples true (samples in [-1, 1], no x32768),
        and knf's own defaults: preemph_coeff 0.97, round_to_power_of_two true, use_energy false,
        use_log_fbank true, use_power true, log floor FLT_EPSILON.
    {"kind": "whisper_mel", "sample_rate": 16000, "num_mel_bins": 80, "pad_to_seconds": null | 30}
        Whisper's log-mel (transformers WhisperFeatureExtractor, numpy path), on the real length unless
        pad_to_seconds is set (teacher-initialised CTC students run the encoder on the real length).
    {"kind": "waveform", "sample_rate": 16000, "normalize": true}
        Raw samples, zero mean / unit variance per utterance (Wav2Vec2FeatureExtractor do_normalize).

Features are [T, D] float32 (time first); a waveform is [S] float32.

    from speechkd_runtime.features import compute_features, pad_batch
    feats = [compute_features(frontend, audio) for audio in audios]
    x, x_lens = pad_batch(feats)          # [B, T, D] float32, [B] int64
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from .audio import SAMPLE_RATE_HZ
from .errors import RuntimeInputError

FRAME_SHIFT = 160  # 10 ms at 16 kHz, for both fbank and whisper_mel
FBANK_FRAME_LENGTH = 400  # 25 ms
FBANK_FFT = 512  # round_to_power_of_two(400)
FBANK_PREEMPH = 0.97
FBANK_LOW_FREQ = 20.0
FBANK_HIGH_FREQ = -400.0  # <= 0: offset from Nyquist
FLT_EPSILON = float(np.finfo(np.float32).eps)  # knf's floor before log
WHISPER_N_FFT = 400
FRONTEND_KINDS = ("fbank", "whisper_mel", "waveform")


class FeatureError(RuntimeInputError):
    """A frontend description or an input that cannot be turned into features."""


def _as_mono_float(samples: Any) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise FeatureError(f"expected mono samples of shape [num_samples], got shape {x.shape}; "
                           f"mix channels down first (e.g. samples.mean(axis=1))")
    if not np.issubdtype(x.dtype, np.floating):
        raise FeatureError(f"expected float samples in [-1, 1], got dtype {x.dtype}; divide int16 PCM by 32768")
    return x


# --------------------------------------------------------------------------------------------- filterbanks


class BandedFilters:
    """A triangular filterbank ([bins, M], each column non-zero on one contiguous run of bins, a bin in at
    most two columns) applied without a matrix product.

    `power @ filters` would go to numpy's multi-threaded BLAS, whose threads then spin-wait for the next
    product and take the cores onnxruntime (or torch) is about to use: on 2 cores that cost the int8 conformer
    of benchmarks/export.py ~16 % of its transcription time (2.07 -> 1.74 s for 120 utterances with
    OPENBLAS_NUM_THREADS=1; throwaway timing), and the PyTorch student, whose torch threads met the same
    spinning, ~30 % (3.55 -> 2.45 s in benchmarks/export.py once this class replaced the product). Here
    the even and the odd columns each have disjoint, ordered supports, so each half is one weighted
    `np.add.reduceat` over the bins: single-threaded, ~0.15 ms per second of audio.
    """

    def __init__(self, filters: np.ndarray):
        filters = np.asarray(filters, dtype=np.float64)
        self.num_filters = filters.shape[1]
        nonzero = filters != 0
        self.halves = []
        for parity in (0, 1):
            cols = [m for m in range(self.num_filters) if m % 2 == parity and nonzero[:, m].any()]
            starts = np.array([np.flatnonzero(nonzero[:, m])[0] for m in cols], dtype=np.intp)
            ends = np.array([np.flatnonzero(nonzero[:, m])[-1] for m in cols], dtype=np.intp)
            if np.any(ends[:-1] >= starts[1:]):  # also catches starts that do not increase
                raise ValueError("filters are not banded: every second column must end before the next one starts")
            weights = np.zeros(filters.shape[0])
            for m in cols:
                weights[nonzero[:, m]] = filters[nonzero[:, m], m]
            self.halves.append((np.array(cols, dtype=np.intp), starts, weights))

    def __call__(self, power: np.ndarray) -> np.ndarray:
        """[T, M] filter energies of a [T, bins] power spectrum (= power @ filters)."""
        out = np.zeros((power.shape[0], self.num_filters), dtype=np.float64)
        for cols, starts, weights in self.halves:
            if len(cols) and power.shape[0]:
                # Segment k sums bins starts[k] .. starts[k+1] - 1: column k's support plus zero-weight bins.
                out[:, cols] = np.add.reduceat(power * weights, starts, axis=1)
        return out


@lru_cache(maxsize=8)
def banded_filters(kind: str, num_mel_bins: int) -> BandedFilters:
    return BandedFilters(kaldi_mel_banks(num_mel_bins) if kind == "fbank" else slaney_mel_filters(num_mel_bins))


# --------------------------------------------------------------------------------------------- kaldi fbank


def _kaldi_mel(f: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(f / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(num_mel_bins: int = 80, sample_rate: int = SAMPLE_RATE_HZ, fft_size: int = FBANK_FFT,
                    low_freq: float = FBANK_LOW_FREQ, high_freq: float = FBANK_HIGH_FREQ) -> np.ndarray:
    """Kaldi's triangular mel filters (HTK mel, no area normalisation) as a [fft_size//2 + 1, bins] matrix.

    Kaldi only fills bins 0 .. fft_size/2 - 1; the Nyquist row stays zero so the matrix can multiply a full
    one-sided power spectrum.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise FeatureError(f"bad mel range: low_freq {low_freq}, high_freq {high_freq} at {sample_rate} Hz")
    mel_low, mel_high = _kaldi_mel(np.float64(low_freq)), _kaldi_mel(np.float64(high))
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    b = np.arange(num_mel_bins, dtype=np.float64)[None, :]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _kaldi_mel(np.arange(fft_size // 2, dtype=np.float64) * (sample_rate / fft_size))[:, None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.where((mel > left) & (mel < right), np.where(mel <= center, up, down), 0.0)
    return np.concatenate([weights, np.zeros((1, num_mel_bins))], axis=0)


@lru_cache(maxsize=4)
def _povey_window(length: int) -> np.ndarray:
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))) ** 0.85


def fbank_num_frames(num_samples: int) -> int:
    """Frames kaldi emits with snip_edges=False: one per 10 ms, rounded to the nearest frame."""
    return (int(num_samples) + FRAME_SHIFT // 2) // FRAME_SHIFT


def kaldi_fbank(samples: Any, num_mel_bins: int = 80) -> np.ndarray:
    """[T, num_mel_bins] float32 log-mel filterbank of 16 kHz samples in [-1, 1] (sherpa-onnx's front end)."""
    x = _as_mono_float(samples).astype(np.float64, copy=False)
    num_frames = fbank_num_frames(len(x))
    if num_frames == 0:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    # snip_edges=False centres frame i on sample i*shift + shift/2; samples outside the signal are mirrored
    # (kaldi reflects as x[-1-i] / x[2n-1-i], repeatedly for very short inputs) = numpy's "symmetric" pad.
    left = FBANK_FRAME_LENGTH // 2 - FRAME_SHIFT // 2
    right = max(0, (num_frames - 1) * FRAME_SHIFT - left + FBANK_FRAME_LENGTH - len(x))
    padded = np.pad(x, (left, right), mode="symmetric")

    def framed(signal: np.ndarray) -> np.ndarray:  # a view: [num_frames, FBANK_FRAME_LENGTH]
        return np.lib.stride_tricks.sliding_window_view(signal, FBANK_FRAME_LENGTH)[::FRAME_SHIFT][:num_frames]

    windows = framed(padded)
    # Per frame kaldi removes the mean m, then pre-emphasises: y[i] = (x[i] - m) - c (x[i-1] - m) for i > 0,
    # y[0] = (1 - c)(x[0] - m). That is the pre-emphasised signal, framed once, minus (1 - c) m, with each
    # frame's first sample replaced: the same numbers without a pass over every frame for each step.
    emphasised = np.empty_like(padded)
    emphasised[0] = 0.0
    emphasised[1:] = padded[1:] - FBANK_PREEMPH * padded[:-1]
    frames = framed(emphasised).copy()
    frames[:, 0] = windows[:, 0]
    frames[:, 0] *= 1.0 - FBANK_PREEMPH
    frames -= (1.0 - FBANK_PREEMPH) * windows.mean(axis=1, keepdims=True)
    frames *= _povey_window(FBANK_FRAME_LENGTH)
    spec = np.fft.rfft(frames, n=FBANK_FFT, axis=1)
    power = spec.real**2 + spec.imag**2
    mel = banded_filters("fbank", num_mel_bins)(power)
    return np.log(np.maximum(mel, FLT_EPSILON)).astype(np.float32)


# --------------------------------------------------------------------------------------------- whisper mel


def _hz_to_slaney_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above (what librosa/Whisper use).
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    log_region = f >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=8)
def slaney_mel_filters(num_mel_bins: int = 80, sample_rate: int = SAMPLE_RATE_HZ, n_fft: int = WHISPER_N_FFT,
                       f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """[n_fft//2 + 1, bins] slaney-scale, slaney-normalised (constant area) triangular filters, like
    transformers' mel_filter_bank(..., norm="slaney", mel_scale="slaney") and librosa's defaults."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(f_min), _hz_to_slaney_mel(f_max), num_mel_bins + 2))
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


@lru_cache(maxsize=2)
def _hann_periodic(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def whisper_num_frames(num_samples: int, pad_to_seconds: float | None = None) -> int:
    n = int(round(pad_to_seconds * SAMPLE_RATE_HZ)) if pad_to_seconds else int(num_samples)
    return n // FRAME_SHIFT


def whisper_log_mel(samples: Any, num_mel_bins: int = 80, pad_to_seconds: float | None = None) -> np.ndarray:
    """[T, num_mel_bins] float32 Whisper log-mel; T = len // 160 (3000 when padded to 30 s).

    With pad_to_seconds the audio is zero-padded (or truncated) to that length first, as Whisper models
    expect; without it the dynamic range clamp (max - 8) uses the real audio only.
    """
    x = _as_mono_float(samples).astype(np.float64, copy=False)
    if pad_to_seconds:
        n = int(round(pad_to_seconds * SAMPLE_RATE_HZ))
        x = np.pad(x[:n], (0, max(0, n - len(x))))
    num_frames = len(x) // FRAME_SHIFT  # the STFT gives len//hop + 1 frames; Whisper drops the last one
    if num_frames == 0:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    half = WHISPER_N_FFT // 2
    # Centred STFT with reflect padding (numpy "reflect" needs len > 1; len >= 160 here).
    padded = np.pad(x, (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, WHISPER_N_FFT)[::FRAME_SHIFT][:num_frames]
    spec = np.fft.rfft(frames * _hann_periodic(WHISPER_N_FFT), axis=1)
    # transformers rounds the STFT to complex64 before taking the power; do the same for bit-level agreement.
    power = np.abs(spec.astype(np.complex64), dtype=np.float64) ** 2
    log_spec = np.log10(np.maximum(1e-10, banded_filters("whisper_mel", num_mel_bins)(power))).astype(np.float32)
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- waveform


def normalize_waveform(samples: Any, eps: float = 1e-7) -> np.ndarray:
    """Zero mean, unit variance per utterance (Wav2Vec2FeatureExtractor's do_normalize)."""
    x = _as_mono_float(samples).astype(np.float32, copy=False)
    if len(x) == 0:
        return x.copy()
    return ((x - x.mean()) / np.sqrt(x.var() + eps)).astype(np.float32)


# --------------------------------------------------------------------------------------------- dispatch


def make_frontend(kind: str, *, num_mel_bins: int = 80, pad_to_seconds: float | None = None,
                  normalize: bool = True, sample_rate: int = SAMPLE_RATE_HZ) -> dict:
    """The frontend dict saved in config.json (validated)."""
    if kind == "fbank":
        fe = {"kind": kind, "sample_rate": sample_rate, "num_mel_bins": num_mel_bins}
    elif kind == "whisper_mel":
        fe = {"kind": kind, "sample_rate": sample_rate, "num_mel_bins": num_mel_bins, "pad_to_seconds": pad_to_seconds}
    elif kind == "waveform":
        fe = {"kind": kind, "sample_rate": sample_rate, "normalize": normalize}
    else:
        raise FeatureError(f"unknown frontend kind {kind!r}; choose one of {list(FRONTEND_KINDS)}")
    return validate_frontend(fe)


def validate_frontend(frontend: Mapping[str, Any]) -> dict:
    if not isinstance(frontend, Mapping) or "kind" not in frontend:
        raise FeatureError(f"a frontend is a mapping with a 'kind' in {list(FRONTEND_KINDS)}, got {frontend!r}")
    kind = frontend["kind"]
    if kind not in FRONTEND_KINDS:
        raise FeatureError(f"unknown frontend kind {kind!r}; choose one of {list(FRONTEND_KINDS)}")
    sr = frontend.get("sample_rate", SAMPLE_RATE_HZ)
    if sr != SAMPLE_RATE_HZ:
        raise FeatureError(f"frontend sample_rate {sr}: only {SAMPLE_RATE_HZ} Hz is supported; resample the audio "
                           f"and set sample_rate {SAMPLE_RATE_HZ}")
    if kind != "waveform" and int(frontend.get("num_mel_bins", 80)) < 1:
        raise FeatureError(f"num_mel_bins must be >= 1, got {frontend.get('num_mel_bins')}")
    return dict(frontend)


def compute_features(frontend: Mapping[str, Any], samples: Any) -> np.ndarray:
    """Features for one utterance: [T, D] float32 for mel front ends, [S] float32 for "waveform"."""
    kind = frontend.get("kind") if isinstance(frontend, Mapping) else None
    if kind == "fbank":
        return kaldi_fbank(samples, int(frontend.get("num_mel_bins", 80)))
    if kind == "whisper_mel":
        return whisper_log_mel(samples, int(frontend.get("num_mel_bins", 80)), frontend.get("pad_to_seconds"))
    if kind == "waveform":
        if frontend.get("normalize", True):
            return normalize_waveform(samples)
        return _as_mono_float(samples).astype(np.float32)
    validate_frontend(frontend)  # raises with the valid kinds
    raise AssertionError("unreachable")


def frame_rate_hz(frontend: Mapping[str, Any]) -> float:
    """Input frames (or samples, for "waveform") per second of audio."""
    if frontend["kind"] == "waveform":
        return float(frontend.get("sample_rate", SAMPLE_RATE_HZ))
    return frontend.get("sample_rate", SAMPLE_RATE_HZ) / FRAME_SHIFT


def num_input_frames(frontend: Mapping[str, Any], num_samples: int) -> int:
    """Length of compute_features(frontend, x) along time, for len(x) == num_samples, without computing it."""
    kind = frontend["kind"]
    if kind == "fbank":
        return fbank_num_frames(num_samples)
    if kind == "whisper_mel":
        return whisper_num_frames(num_samples, frontend.get("pad_to_seconds"))
    return int(num_samples)


def feature_dim(frontend: Mapping[str, Any]) -> int | None:
    """D of [T, D] features, or None for the waveform front end (features are [S])."""
    return None if frontend["kind"] == "waveform" else int(frontend.get("num_mel_bins", 80))


def pad_batch(features: Sequence[np.ndarray], pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Stack [T_i, D] (or [S_i]) arrays into [B, T_max, D] (or [B, S_max]) float32 plus int64 lengths."""
    if not features:
        raise FeatureError("pad_batch needs at least one utterance")
    lens = np.array([len(f) for f in features], dtype=np.int64)
    shape = (len(features), int(lens.max()), *features[0].shape[1:])
    out = np.full(shape, pad_value, dtype=np.float32)
    for i, f in enumerate(features):
        out[i, : len(f)] = f
    return out, lens
