"""Reading audio on the device: any file soundfile reads, downmixed to mono, resampled to the model's rate.

Resampling method (stated, because a silently wrong rate silently ruins transcripts): band-limited
interpolation with a Kaiser-windowed sinc filter, evaluated as a polyphase filter bank over the
rational ratio out/in reduced by their gcd. The filter spans 32 zero crossings each side, Kaiser
beta 9 (stopband attenuation about 90 dB), and its cutoff is 0.945 of the lower of the two Nyquist
frequencies, so downsampling does not alias. This is the method of resampy's/libsamplerate's
"best" sinc resamplers, done in numpy so the runtime needs no compiled resampler; it agrees with
soxr to well below the level that changes a transcript. Rates whose reduced ratio has a numerator
above MAX_PHASES are refused (the filter bank would be too large); resample such files with sox
or ffmpeg first.
"""

from __future__ import annotations

import os
from math import gcd

import numpy as np

from .errors import RuntimeInputError

SAMPLE_RATE_HZ = 16_000  # what every model of the toolkit consumes: the one definition, imported everywhere
NUM_ZEROS = 32  # zero crossings of the sinc on each side of the centre tap
KAISER_BETA = 9.0
ROLLOFF = 0.945  # cutoff as a fraction of the lower Nyquist frequency: leaves a transition band before it
MAX_PHASES = 20_000  # e.g. 16000/44100 reduces to 160/441: 160 phases; 48000 <-> 44100 needs 147 or 160


class AudioError(RuntimeInputError):
    """An input that cannot be turned into mono samples at the model's rate; the message says why and the fix."""


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sample rate) of a file; channels are averaged."""
    import soundfile as sf

    try:
        data, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for unreadable formats
        raise AudioError(f"{path}: cannot read audio ({e}); convert it to WAV or FLAC, "
                         f"e.g. `ffmpeg -i {path} -ar 16000 -ac 1 out.wav`") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    return downmix(data), int(sr)


def downmix(samples: np.ndarray) -> np.ndarray:
    """Mono float32 from [S] or [S, C] samples (channel average)."""
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    elif x.ndim != 1:
        raise AudioError(f"expected samples shaped [S] or [S, channels], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"expected float samples in [-1, 1], got dtype {x.dtype}; divide int16 PCM by 32768")
    return np.ascontiguousarray(x, dtype=np.float32)


def _filter_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """Polyphase taps [up, 2*half+1] for output phase p = (n*down) % up, and the half-width in input samples."""
    # Cutoff in cycles per input sample; when downsampling the filter widens by down/up to stay band-limited.
    cutoff = ROLLOFF * 0.5 * min(1.0, up / down)
    half = int(np.ceil(NUM_ZEROS / (2 * cutoff)))
    k = np.arange(-half, half + 1, dtype=np.float64)
    frac = np.arange(up, dtype=np.float64)[:, None] / up  # fractional position of each phase
    t = k[None, :] - frac  # distance (in input samples) from the output instant to each tap
    # The Kaiser window is evaluated at each tap's exact (fractional) offset, so every phase is windowed alike.
    arg = np.clip(t / (half + 1), -1.0, 1.0)
    kaiser = np.i0(KAISER_BETA * np.sqrt(1.0 - arg**2)) / np.i0(KAISER_BETA)
    taps = 2 * cutoff * np.sinc(2 * cutoff * t) * kaiser
    return taps.astype(np.float32), half


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 samples from orig_sr to target_sr (Kaiser-windowed sinc, see module doc)."""
    x = downmix(samples)
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return x
    g = gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    if up > MAX_PHASES:
        raise AudioError(f"cannot resample {orig_sr} Hz -> {target_sr} Hz here (ratio {up}/{down} needs {up} "
                         f"filter phases, more than {MAX_PHASES}); resample the file first, e.g. "
                         f"`ffmpeg -i in.wav -ar {target_sr} out.wav`")
    taps, half = _filter_bank(up, down)
    n_out = int(np.ceil(len(x) * up / down))
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + down + 1, np.float32)])
    # windows[i] = padded[i : i + taps]; output n reads the window starting at base(n) = (n*down) // up.
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps.shape[1])
    out = np.empty(n_out, dtype=np.float32)
    # Outputs r, r+up, r+2up, ... share one phase and step through the input by `down` samples, so each
    # residue class is one matrix-vector product over a strided view (no gather copies).
    for r in range(min(up, n_out)):
        base, phase = divmod(r * down, up)
        count = len(range(r, n_out, up))
        out[r::up] = windows[base : base + count * down : down] @ taps[phase]
    return out


def to_model_rate(samples: np.ndarray, sample_rate: int | None, model_rate: int) -> np.ndarray:
    """Mono float32 at model_rate; refuses to guess the rate of a bare array."""
    if sample_rate is None:
        raise AudioError(f"an array was given without its sample rate; pass sample_rate= "
                         f"(this model expects {model_rate} Hz)")
    return resample(samples, int(sample_rate), int(model_rate))


def load_audio(path: str | os.PathLike, model_rate: int) -> np.ndarray:
    """Read a file and return mono float32 samples at model_rate."""
    samples, sr = read_audio(path)
    return resample(samples, sr, model_rate)
