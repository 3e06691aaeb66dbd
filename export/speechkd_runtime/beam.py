"""CTC prefix beam search with an optional word n-gram LM (shallow fusion), for char or "▁"-subword vocabularies.

The search keeps, per collapsed token prefix, the probability of all alignments ending in a blank and
of those ending in its last token (Graves 2006; Hannun et al. 2014), and ranks prefixes by

    log P_ctc(prefix) + lm_weight * log P_lm(completed words) + word_score * #words  [+ unk_score]

where a word is completed when a token starting with "▁" (a space, or a subword's word-start mark)
follows it, and at the end of the utterance (which also scores the end of sentence). A partial word
that is not the prefix of any LM word gets `unk_score` while it lasts, and a completed out-of-vocabulary
word keeps it, so beams do not fill up with spellings the LM has never seen (the trick pyctcdecode uses).

Written by hand, not taken from pyctcdecode or torchaudio's flashlight decoder: this runtime depends on
numpy, onnxruntime and soundfile only. Two prunings keep it fast in pure Python: frames where the blank
has probability >= `blank_skip_prob` only extend prefixes by blank or by repeating their last token, and
other frames consider only tokens with log-probability >= `token_min_logp` (and always the best one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .ngram import EOS, NgramLM

SPACE = "▁"  # the word-start mark of tokens.txt symbols (a space of its own in character vocabularies)
NEG_INF = float("-inf")


@dataclass(frozen=True)
class BeamSearchOptions:
    """Decoding settings. The defaults are what benchmarks/ctc_students.py chose on its synthetic dev set for
    a character CTC student (Whisper-encoder, 800 steps) with a word trigram from its pseudo-labels; choose
    your own with speechkd.evaluate.sweep_ctc_decoding for another model or LM."""

    beam_size: int = 16
    lm_weight: float = 0.2  # alpha: weight of the LM's natural-log probability
    word_score: float = 1.0  # beta: bonus per word, offsets the LM's preference for short outputs
    unk_score: float = -8.0  # added for a partial or completed word the LM does not know
    token_min_logp: float = -5.0  # tokens below this log-probability are not tried at a frame
    blank_skip_prob: float = 0.999  # frames this sure of blank only extend by blank/repeat

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not 0.0 < self.blank_skip_prob <= 1.0:
            raise ValueError(f"blank_skip_prob must be in (0, 1], got {self.blank_skip_prob}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class CtcBeamSearch:
    """decode(log_probs [T, V]) -> text; `lm` is an NgramLM (or None for a plain prefix beam search)."""

    def __init__(self, tokens: Sequence[str], blank_id: int, lm: NgramLM | None = None,
                 options: BeamSearchOptions = BeamSearchOptions()):
        options.validate()
        self.tokens = list(tokens)
        self.blank_id = int(blank_id)
        self.lm = lm
        self.opt = options
        self.blank_skip_logp = math.log(options.blank_skip_prob)
        # Per token: does it start a new word, and the characters it adds to the current word.
        self._starts_word = [t.startswith(SPACE) for t in self.tokens]
        self._chars = [t[1:] if t.startswith(SPACE) else t for t in self.tokens]

    # --- word-level scoring of a prefix -------------------------------------------------------------
    # A prefix's LM side is (history, word_sum, n_words, partial_word, bonus): word_sum is the weighted
    # LM score of its completed words (unk_score included), bonus what the ranking adds to the CTC score.
    # It is derived from the parent's in O(1) when a token is added.

    def _root(self) -> tuple:
        return (self.lm.start() if self.lm else (), 0.0, 0, "", 0.0)

    def _word(self, history: tuple, word: str) -> tuple[float, tuple]:
        """Weighted LM score of completing `word` after `history`, and the history after it."""
        logp, nxt = self.lm.score(history, word)
        score = self.opt.lm_weight * logp
        return (score if word in self.lm.words else score + self.opt.unk_score), nxt

    def _extend(self, state: tuple, token: int) -> tuple:
        if self.lm is None:
            return state
        history, word_sum, n_words, partial, _ = state
        if self._starts_word[token] and partial:
            score, history = self._word(history, partial)
            word_sum, n_words, partial = word_sum + score, n_words + 1, ""
        partial += self._chars[token]
        bonus = word_sum + self.opt.word_score * n_words
        if partial and partial not in self.lm.prefixes:
            bonus += self.opt.unk_score
        return (history, word_sum, n_words, partial, bonus)

    def _final_bonus(self, state: tuple) -> float:
        if self.lm is None:
            return 0.0
        history, word_sum, n_words, partial, _ = state
        if partial:
            score, history = self._word(history, partial)
            word_sum, n_words = word_sum + score, n_words + 1
        end, _ = self.lm.score(history, EOS)
        return word_sum + self.opt.lm_weight * end + self.opt.word_score * n_words

    # --- search --------------------------------------------------------------------------------------

    def decode_ids(self, log_probs: np.ndarray) -> list[int]:
        """The best collapsed token-id sequence (no blanks)."""
        lp_all = np.asarray(log_probs, dtype=np.float64)
        if lp_all.ndim != 2 or lp_all.shape[1] != len(self.tokens):
            raise ValueError(f"expected log-probabilities [T, {len(self.tokens)}], got shape {lp_all.shape}")
        blank, beam_size = self.blank_id, self.opt.beam_size
        # Candidate tokens per frame, chosen with numpy once; the search itself runs on Python floats,
        # which are several times faster than numpy scalars in this kind of loop.
        keep = lp_all >= self.opt.token_min_logp
        keep[np.arange(len(lp_all)), lp_all.argmax(axis=1)] = True
        keep[:, blank] = False
        skip = (lp_all[:, blank] >= self.blank_skip_logp).tolist()
        # Prefixes are nodes of a tree (node 0: empty), so a prefix is an int, not a tuple hashed at full
        # length on every dict access. Per node: its parent, its last token and its LM state.
        parent, last_token, lm_state = [-1], [-1], [self._root()]
        child: dict[tuple[int, int], int] = {}
        beams: dict[int, list[float]] = {0: [0.0, NEG_INF]}  # node -> [log p ends in blank, ends in its last token]
        for t, lp in enumerate(lp_all.tolist()):
            lp_blank = lp[blank]
            if skip[t]:
                # Nearly certain blank: only blank or a repeat of the prefix's last token (the rest is < 1e-3).
                for node, probs in beams.items():
                    pb, pnb = probs
                    probs[0] = _logaddexp(pb, pnb) + lp_blank
                    probs[1] = pnb + lp[last_token[node]] if node else NEG_INF
                continue
            cands = np.flatnonzero(keep[t]).tolist()
            nxt: dict[int, list[float]] = {}
            for node, (pb, pnb) in beams.items():
                total = _logaddexp(pb, pnb)
                last = last_token[node]
                stay = pnb + lp[last] if node else NEG_INF  # the last token continues (collapses)
                cur = nxt.get(node)
                if cur is None:
                    nxt[node] = [total + lp_blank, stay]
                else:
                    cur[0] = _logaddexp(cur[0], total + lp_blank)
                    cur[1] = _logaddexp(cur[1], stay)
                for c in cands:
                    new = child.get((node, c))
                    if new is None:
                        new = child[(node, c)] = len(parent)
                        parent.append(node)
                        last_token.append(c)
                        lm_state.append(self._extend(lm_state[node], c))
                    # A repeated token only starts a new symbol after a blank.
                    step = (pb if c == last else total) + lp[c]
                    entry = nxt.get(new)
                    if entry is None:
                        nxt[new] = [NEG_INF, step]
                    else:
                        entry[1] = _logaddexp(entry[1], step)
            if len(nxt) > beam_size:
                ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]) + lm_state[kv[0]][4], reverse=True)
                nxt = dict(ranked[:beam_size])
            beams = nxt
        node = max(beams, key=lambda n: _logaddexp(*beams[n]) + self._final_bonus(lm_state[n]))
        ids = []
        while node:
            ids.append(last_token[node])
            node = parent[node]
        return ids[::-1]

    def decode(self, log_probs: np.ndarray) -> str:
        return ids_to_text(self.decode_ids(log_probs), self.tokens)


def ids_to_text(ids: Sequence[int], tokens: Sequence[str]) -> str:
    """Concatenate symbols ("▁" is a space) and tidy whitespace — what sherpa-onnx prints, stripped."""
    text = "".join(tokens[int(i)] for i in ids).replace(SPACE, " ")
    return " ".join(text.split())
