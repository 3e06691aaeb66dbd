"""Planning Whisper windows: pack short clips together, cut long audio at quiet points.

Whisper's encoder always sees 30 s. A 3-s clip padded to 30 s spends ~90% of the encoder on
silence, and on a CPU the encoder dominates the cost of a short clip. Packing several clips into one
window (separated by silence) and splitting the transcript back by token times is the single
largest speed lever for labelling short-utterance corpora. Everything here is a pure function of
lengths, audio or token times, so plans are deterministic: a resumed run decodes exactly the same
windows in exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

WINDOW_SECONDS = 30.0  # Whisper's fixed input length
PACK_MARGIN_SECONDS = 0.5  # keep packed audio clear of the window's end, where Whisper truncates words
LONG_MIN_CHUNK_SECONDS = 20.0  # long audio is cut at the quietest point between 20 and 30 s of each chunk
QUIET_FRAME_SECONDS = 0.1  # energy is measured over 100 ms frames to find a cut point


@dataclass(frozen=True)
class Piece:
    """One utterance's audio placed in a window: samples [start, end) of utterance `utt`, at `offset`."""

    utt: int
    start: int
    end: int
    offset: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Window:
    """Up to 30 s of audio decoded in one pass: one piece (solo/long chunk) or several (packed)."""

    pieces: tuple[Piece, ...]

    @property
    def packed(self) -> bool:
        return len(self.pieces) > 1

    @property
    def length(self) -> int:
        last = self.pieces[-1]
        return last.offset + last.length

    def spans_seconds(self, sample_rate: int) -> list[tuple[float, float]]:
        return [(p.offset / sample_rate, (p.offset + p.length) / sample_rate) for p in self.pieces]

    def assemble(self, audios: dict[int, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.length, dtype=np.float32)
        for p in self.pieces:
            out[p.offset : p.offset + p.length] = audios[p.utt][p.start : p.end]
        return out


def pack_windows(
    lengths: Sequence[int],
    keys: Sequence[str],
    *,
    sample_rate: int,
    pack: bool = True,
    gap_seconds: float = 1.0,
    max_pieces: int = 12,
) -> list[Window]:
    """Windows for utterances of at most 30 s: first-fit decreasing bin packing, deterministic.

    `keys` (utterance ids) break ties so the plan does not depend on input order. Utterances longer
    than a window are not accepted here (see `split_long`).
    """
    window = int(WINDOW_SECONDS * sample_rate)
    capacity = int((WINDOW_SECONDS - PACK_MARGIN_SECONDS) * sample_rate)
    gap = int(gap_seconds * sample_rate)
    for i, n in enumerate(lengths):
        if n > window:
            raise ValueError(f"utterance {keys[i]} is longer than {WINDOW_SECONDS} s; split it with split_long first")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i]))
    if not pack:
        return [Window((Piece(i, 0, lengths[i], 0),)) for i in order]
    bins: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = lengths[i]
        for b, members in enumerate(bins):
            if len(members) < max_pieces and used[b] + gap + n <= capacity:
                members.append(i)
                used[b] += gap + n
                break
        else:
            bins.append([i])
            used.append(n)
    windows = []
    for members in bins:
        # Within a window keep a stable order (by key) so the transcript order is reproducible.
        members = sorted(members, key=lambda i: keys[i])
        pieces, offset = [], 0
        for i in members:
            pieces.append(Piece(i, 0, lengths[i], offset))
            offset += lengths[i] + gap
        windows.append(Window(tuple(pieces)))
    return windows


def split_long(audio: np.ndarray, utt: int, *, sample_rate: int) -> list[Window]:
    """Cut audio longer than a window into <= 30 s chunks at the quietest 100 ms between 20 and 30 s.

    Cutting in a pause rather than at a fixed 30 s keeps words whole; each chunk is decoded on its own
    and the transcripts are joined, so long audio is transcribed completely, never truncated.
    """
    window = int(WINDOW_SECONDS * sample_rate)
    min_chunk = int(LONG_MIN_CHUNK_SECONDS * sample_rate)
    frame = max(1, int(QUIET_FRAME_SECONDS * sample_rate))
    chunks, start = [], 0
    while len(audio) - start > window:
        lo, hi = start + min_chunk, start + window
        seg = audio[lo:hi]
        n_frames = len(seg) // frame
        energy = (seg[: n_frames * frame].reshape(n_frames, frame) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        chunks.append(Window((Piece(utt, start, cut, 0),)))
        start = cut
    chunks.append(Window((Piece(utt, start, len(audio), 0),)))
    return chunks


def assign_tokens(
    token_starts: Sequence[float],
    word_starts: Sequence[bool],
    spans: Sequence[tuple[float, float]],
    *,
    max_outside_seconds: float = 0.35,
    min_coverage: float = 0.35,
    min_relative_rate: float = 0.4,
) -> tuple[list[int], set[int]]:
    """Which packed piece each token belongs to, from token start times (seconds).

    Tokens are grouped into words (a word starts at a token with a leading space), and a word belongs
    to the piece whose extended span (boundaries at the middle of each gap) holds its start time, so
    punctuation stays with the word it follows. Returns (piece index per token, suspicious pieces).

    A piece is suspicious when its split cannot be trusted: a word lands deep inside a gap, pieces come
    out of order, or its words cover too little of its duration or are far sparser than the window's
    (the signature of Whisper skipping a clip and DTW handing a neighbour's words to it). Such a
    piece and its neighbours are re-decoded on their own by the caller.
    """
    bounds = [(spans[k][1] + spans[k + 1][0]) / 2 for k in range(len(spans) - 1)]
    assignment: list[int] = []
    suspicious: set[int] = set()
    current = 0
    word_times: dict[int, list[float]] = {}
    for t, (start, is_word_start) in enumerate(zip(token_starts, word_starts)):
        if t == 0 or is_word_start:
            current = int(np.searchsorted(bounds, start, side="right"))
            lo, hi = spans[current]
            if start < lo - max_outside_seconds or start > hi + max_outside_seconds:
                suspicious.add(current)
            word_times.setdefault(current, []).append(start)
        if assignment and current < assignment[-1]:
            suspicious.update({current, assignment[-1]})
        assignment.append(current)
    total_words = sum(len(v) for v in word_times.values())
    total_seconds = sum(hi - lo for lo, hi in spans)
    window_rate = total_words / total_seconds if total_seconds else 0.0
    for k, (lo, hi) in enumerate(spans):
        times = word_times.get(k, [])
        if not times:
            continue  # no words at all: the caller packs it again
        coverage = (max(times) - min(times)) / (hi - lo) if len(times) > 1 else 0.0
        rate = len(times) / (hi - lo)
        if coverage < min_coverage or rate < min_relative_rate * window_rate:
            suspicious.update({k - 1, k, k + 1} & set(range(len(spans))))
    return assignment, suspicious
