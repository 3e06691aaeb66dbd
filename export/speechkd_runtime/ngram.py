"""A word n-gram language model read from an ARPA file, for CTC beam search (pure Python, no numpy needed).

ARPA is the text format SRILM, KenLM (`lmplz`) and `speechkd lm` write: per order, lines of
"log10(p)  w1 .. wn  [log10(backoff)]". A word's probability after a history is the longest listed
n-gram ending in it, times the backoff weights of the longer histories that were not listed (Katz
backoff form, which interpolated Kneser-Ney models are also stored in).

Written by hand rather than taken from `kenlm`: the runtime's only dependencies are numpy, onnxruntime
and soundfile, and `kenlm` needs a C++ build on the device. The models a CTC student needs (a few MB of
ARPA from in-domain text) load in a second; for very large LMs, prune them first.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import RuntimeInputError

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# What an ARPA file without an <unk> entry gives an unknown word: SRILM/KenLM's conventional -100 (log10).
DEFAULT_UNK_LOG10 = -100.0


class ArpaError(RuntimeInputError):
    """A file that is not a readable ARPA language model; the message names the file and the line."""


class NgramLM:
    """An ARPA n-gram LM: `score(history, word)` -> (natural-log probability, next history).

        lm = NgramLM("lm.arpa")
        state = lm.start()
        logp, state = lm.score(state, "hello")
        logp_end, _ = lm.score(state, "</s>")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ArpaError(f"language model {self.path} does not exist; build one with `speechkd lm` "
                            f"or give any ARPA file (SRILM, KenLM lmplz)")
        # (w1, ..., wn) -> (ln p, ln backoff). Natural logs, so LM and CTC scores add without conversion.
        self.entries: dict[tuple[str, ...], tuple[float, float]] = {}
        self.order = self._read()
        self.unk_logp = self.entries.get((UNK,), (DEFAULT_UNK_LOG10 * LN10, 0.0))[0]
        self.words = frozenset(g[0] for g in self.entries if len(g) == 1) - {BOS, EOS, UNK}
        # Every prefix of a known word: beam search uses it to penalise partial words that can only end OOV.
        self.prefixes = frozenset(w[:i] for w in self.words for i in range(1, len(w) + 1))
        self._cache: dict[tuple, tuple[float, tuple[str, ...]]] = {}

    def _read(self) -> int:
        declared: dict[int, int] = {}
        section = 0
        with self.path.open(encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = -1
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    try:
                        section = int(line[1:-7])
                    except ValueError:
                        raise ArpaError(f"{self.path}:{lineno}: bad section header {line!r}") from None
                    continue
                if section == -1:
                    if line.startswith("ngram ") and "=" in line:
                        n, count = line[6:].split("=", 1)
                        declared[int(n)] = int(count)
                    continue
                if section <= 0:
                    continue
                parts = line.split()
                if len(parts) not in (section + 1, section + 2):
                    raise ArpaError(f"{self.path}:{lineno}: a {section}-gram line needs log10 p, {section} word(s) "
                                    f"and an optional backoff; got {line!r}")
                try:
                    logp = float(parts[0])
                    bow = float(parts[section + 1]) if len(parts) == section + 2 else 0.0
                except ValueError:
                    raise ArpaError(f"{self.path}:{lineno}: not a number in {line!r}") from None
                self.entries[tuple(parts[1 : section + 1])] = (logp * LN10, bow * LN10)
        if not declared or not self.entries:
            raise ArpaError(f"{self.path} is not an ARPA file (no \\data\\ header or no n-grams)")
        return max(declared)

    def start(self) -> tuple[str, ...]:
        """The history at the start of a sentence."""
        return (BOS,) if self.order > 1 else ()

    def score(self, history: tuple[str, ...], word: str) -> tuple[float, tuple[str, ...]]:
        """(ln P(word | history), the history after it). Unknown words score as <unk>."""
        key = (history, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        w = word if word in self.words or word == EOS else UNK
        logp, h = 0.0, history
        while True:
            entry = self.entries.get(h + (w,))
            if entry is not None:
                logp += entry[0]
                break
            if not h:
                logp += self.unk_logp
                break
            ctx = self.entries.get(h)
            if ctx is not None:
                logp += ctx[1]
            h = h[1:]
        keep = self.order - 1
        nxt = (history + (w,))[-keep:] if keep > 0 else ()
        self._cache[key] = (logp, nxt)
        return logp, nxt
