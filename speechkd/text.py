"""Text normalisation for scoring and filtering.

WER is only comparable across systems when both sides go through the same normaliser. We use
Whisper's own normalisers (English: spelling, numbers, contractions; other languages: the basic one
that strips punctuation and symbols), as Distil-Whisper and the Open ASR Leaderboard do, from the
`whisper-normalizer` package rather than a copy of our own.
"""

from __future__ import annotations

from functools import lru_cache

ENGLISH_CODES = ("en", "english")


@lru_cache(maxsize=None)
def _english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@lru_cache(maxsize=None)
def _basic():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize(text: str | None, language: str | None = "en") -> str:
    """Whisper-normalise `text`: the English normaliser for English (or unknown=None treated as en)."""
    if not text:
        return ""
    lang = (language or "en").lower()
    norm = _english() if lang in ENGLISH_CODES else _basic()
    return " ".join(norm(text).split())

