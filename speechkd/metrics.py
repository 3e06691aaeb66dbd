"""Scoring: WER/CER after Whisper normalisation, real-time factor, model size.

jiwer does the alignment; this module adds what an evaluation report needs around it: the same
normaliser on both sides, per-utterance errors and alignments, and the size/speed numbers that
decide whether a student is worth shipping.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import jiwer

from speechkd.text import normalize


@dataclass
class UtteranceScore:
    id: str
    reference: str
    hypothesis: str
    errors: int
    ref_words: int
    wer: float
    alignment: str = ""


@dataclass
class WerResult:
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    num_utterances: int
    per_utterance: list[UtteranceScore] = field(default_factory=list)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("per_utterance")
        return d


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def utterance_wer(reference: str, hypothesis: str, *, language: str | None = "en", normalise: bool = True) -> float:
    """WER of one pair in percent (insertions against an empty reference count as 100 per word)."""
    ref = normalize(reference, language) if normalise else reference
    hyp = normalize(hypothesis, language) if normalise else hypothesis
    if not ref:
        return 0.0 if not hyp else 100.0 * len(hyp.split())
    return _pct(jiwer.process_words(ref, hyp).wer)


def score(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    language: str | None = "en",
    normalise: bool = True,
    with_alignment: bool = True,
) -> WerResult:
    """Corpus WER/CER (percent) with per-utterance errors; both sides Whisper-normalised."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(references))]
    refs = [normalize(r, language) if normalise else (r or "") for r in references]
    hyps = [normalize(h, language) if normalise else (h or "") for h in hypotheses]
    if not refs:
        return WerResult(0.0, 0.0, 0, 0, 0, 0, 0, 0, [])
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    per_utt = []
    for i, (uid, r, h) in enumerate(zip(ids, refs, hyps)):
        n_ref = len(r.split())
        errs = 0
        for chunk in words.alignments[i]:
            if chunk.type in ("substitute", "delete"):
                errs += chunk.ref_end_idx - chunk.ref_start_idx
            elif chunk.type == "insert":
                errs += chunk.hyp_end_idx - chunk.hyp_start_idx
        wer_i = _pct(errs / n_ref) if n_ref else (0.0 if errs == 0 else 100.0 * errs)
        per_utt.append(UtteranceScore(uid, r, h, errs, n_ref, wer_i))
    if with_alignment:
        for u, r, h, chunks in zip(per_utt, refs, hyps, words.alignments):
            u.alignment = _render_alignment(r.split(), h.split(), chunks)
    ref_words = sum(len(r.split()) for r in refs)
    return WerResult(
        wer=_pct(words.wer) if ref_words else 0.0,
        cer=_pct(chars.cer) if any(refs) else 0.0,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        hits=words.hits,
        ref_words=ref_words,
        num_utterances=len(refs),
        per_utterance=per_utt,
    )


def _render_alignment(ref: list[str], hyp: list[str], chunks) -> str:
    """Three aligned lines (REF, HYP, S/D/I marks), like sclite's and jiwer's pretty output."""
    top, bottom, marks = [], [], []
    for c in chunks:
        r = ref[c.ref_start_idx : c.ref_end_idx]
        h = hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "insert":
            r = ["*" * len(w) for w in h]
        elif c.type == "delete":
            h = ["*" * len(w) for w in r]
        for rw, hw in zip(r, h):
            width = max(len(rw), len(hw))
            top.append(rw.ljust(width))
            bottom.append(hw.ljust(width))
            mark = {"substitute": "S", "delete": "D", "insert": "I"}.get(c.type, " ")
            marks.append(mark.ljust(width))
    return "REF: " + " ".join(top) + "\nHYP: " + " ".join(bottom) + "\n     " + " ".join(marks).rstrip()


def real_time_factor(processing_seconds: float, audio_seconds: float) -> float:
    """Processing time per second of audio (< 1 is faster than real time)."""
    if audio_seconds <= 0:
        raise ValueError("audio_seconds must be positive to compute a real-time factor")
    return processing_seconds / audio_seconds


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def bytes_on_disk(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> int:
    """Total size of files (a directory counts all files below it)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    total = 0
    for p in map(Path, paths):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total
