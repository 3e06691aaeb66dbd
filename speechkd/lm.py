"""Language-model scores of label text: is this a plausible sentence? (the `lm` filter)

Two backends behind one function, `load_text_scorer(spec)`:

- ``"ngram"``: a word trigram LM with interpolated Kneser-Ney smoothing, trained in a second or two on the
  shipped sentence list (`speechkd/resources/sentences.txt`) or any text file. Kneser-Ney rather than
  stupid backoff because the filter compares scores *across* sentences: stupid backoff's scores are not
  probabilities (they do not sum to one and the backoff penalty is arbitrary), so a sentence of rare but
  fine words and a garbled one are hard to tell apart; interpolated KN gives real per-word log-probabilities
  with a sensible estimate for unseen continuations (how many contexts a word follows), and unknown words
  get a fixed small share of the unigram mass instead of zero.
- any Hugging Face causal LM (a `save_pretrained` dir or a Hub id): the same per-word quantity, computed
  from the model's token log-probabilities (total over the tokens, divided by the number of words, so
  the score does not depend on how the tokenizer splits words).

Scores are *negative log-likelihood per word* in nats, higher = less plausible text; both sides of the
comparison go through the Whisper normaliser first, so casing, punctuation and number spelling do not count.

Leakage: the shipped list contains the synthetic corpus's prompts and the LJ Speech transcripts. An LM that
has seen the reference of an utterance gives its correct label a high probability by memory, not by
plausibility, so `exclude` removes given sentences (normalised) from the training text.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from speechkd.text import normalize
from speechkd_runtime.beam import BeamSearchOptions
from speechkd.errors import SpeechkdError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
KN_DISCOUNT = 0.75  # the classic single absolute discount (Kneser & Ney 1995; Chen & Goodman 1998)
DEFAULT_ORDER = 3
HF_BATCH_SIZE = 16


class LMError(SpeechkdError, ValueError):
    """An LM that cannot be built or loaded; the message says what to change."""


def read_training_text(path: str | os.PathLike | None = None) -> list[str]:
    """Lines of a UTF-8 text file, or of the shipped sentence list when `path` is None."""
    if path is None:
        from importlib import resources

        data = resources.files("speechkd").joinpath("resources", "sentences.txt").read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise LMError(f"LM training text {p} does not exist; give a UTF-8 file with one sentence per line")
        data = p.read_text(encoding="utf-8")
    return [line for line in data.splitlines() if line.strip()]


class KneserNeyLM:
    """Interpolated Kneser-Ney word n-gram LM (one discount per order, unknown words via a uniform floor)."""

    def __init__(self, sentences: Iterable[str], order: int = DEFAULT_ORDER, discount: float = KN_DISCOUNT,
                 language: str | None = "en", *, normalised: bool = False):
        if order < 1:
            raise LMError(f"n-gram order must be >= 1, got {order}")
        if not 0 < discount < 1:
            raise LMError(f"Kneser-Ney discount must be in (0, 1), got {discount}")
        self.order, self.d, self.language = order, discount, language
        # counts[k][(history, word)] for k = order (raw counts) and continuation counts below it.
        highest: Counter = Counter()
        n_sentences = 0
        for s in sentences:
            words = (s if normalised else normalize(s, language)).split()
            if not words:
                continue
            n_sentences += 1
            seq = [BOS] * (order - 1) + words + [EOS]
            for i in range(order - 1, len(seq)):
                highest[tuple(seq[i - order + 1 : i + 1])] += 1
        if not n_sentences:
            raise LMError("the LM training text has no usable sentences")
        self.n_sentences = n_sentences
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]  # index = n-gram length
        self.counts[order] = highest
        for n in range(order, 1, -1):  # continuation count of (w_2..w_n) = distinct w_1 before it
            for gram in self.counts[n]:
                self.counts[n - 1][gram[1:]] += 1
        # Per history: total count and number of distinct followers, for each order.
        self.ctx_total: list[dict] = [dict() for _ in range(order + 1)]
        self.ctx_types: list[dict] = [dict() for _ in range(order + 1)]
        for n in range(1, order + 1):
            tot: defaultdict = defaultdict(int)
            typ: defaultdict = defaultdict(int)
            for gram, c in self.counts[n].items():
                tot[gram[:-1]] += c
                typ[gram[:-1]] += 1
            self.ctx_total[n], self.ctx_types[n] = dict(tot), dict(typ)
        self.vocab = {g[0] for g in self.counts[1]}  # words (and </s>) seen as continuations
        self.vocab_size = len(self.vocab) + 1  # + <unk>

    def prob(self, word: str, history: Sequence[str]) -> float:
        """P(word | last order-1 words of history), interpolated KN; never 0."""
        history = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        return self._p(word, history, len(history) + 1)

    def _p(self, word: str, history: tuple, n: int) -> float:
        if n == 1:
            total = self.ctx_total[1].get((), 0)
            types = self.ctx_types[1].get((), 0)
            c = self.counts[1].get((word,), 0)
            uniform = 1.0 / self.vocab_size
            return max(c - self.d, 0.0) / total + self.d * types / total * uniform
        h = history[-(n - 1):]
        total = self.ctx_total[n].get(h, 0)
        lower = self._p(word, history, n - 1)
        if total == 0:
            return lower
        c = self.counts[n].get(h + (word,), 0)
        return max(c - self.d, 0.0) / total + self.d * self.ctx_types[n][h] / total * lower

    def nll_per_word(self, text: str, language: str | None = None) -> float:
        """Mean -log P (nats) over the words of the normalised text and the end of sentence."""
        words = normalize(text, language or self.language).split()
        seq = [BOS] * (self.order - 1) + words + [EOS]
        total = 0.0
        for i in range(self.order - 1, len(seq)):
            total -= math.log(self.prob(seq[i], seq[max(0, i - self.order + 1) : i]))
        return total / (len(words) + 1)


    # --- ARPA export (for CTC beam search: speechkd_runtime.ngram reads it, as do KenLM and SRILM) ------

    def _gamma(self, history: tuple) -> float:
        """Interpolation weight of the lower order after `history` (1 where the history was never seen)."""
        n = len(history) + 1
        total = self.ctx_total[n].get(history, 0) if n <= self.order else 0
        return self.d * self.ctx_types[n][history] / total if total else 1.0

    def arpa_entries(self) -> list[dict[tuple, tuple[float, float | None]]]:
        """Per ARPA order n (index n): {n-gram: (P, backoff or None)}, probabilities not logs.

        This model pads sentences with order-1 <s>; ARPA (and every ARPA reader) uses one. The mapping is
        exact: history <s>^k w1..wj is written as "<s> w1..wj", whose listed words are those seen after it
        and whose backoff is the product of the interpolation weights down the <s>^k chain (a word unseen
        after <s>^k w1..wj is also unseen after every shorter <s> run, since <s> only occurs at the start).
        """
        n_max = self.order
        out: list[dict] = [dict() for _ in range(n_max + 1)]
        for n in range(1, n_max + 1):
            for gram in self.counts[n]:
                if BOS not in gram:
                    out[n][gram] = [self._p(gram[-1], gram[:-1], n), None]
        for gram in self.counts[n_max]:
            k = next((i for i, w in enumerate(gram) if w != BOS), len(gram))
            if k:
                words = gram[k:]
                out[len(words) + 1][(BOS,) + words] = [self._p(gram[-1], gram[:-1], n_max), None]
        total1, types1 = self.ctx_total[1][()], self.ctx_types[1][()]
        out[1][(UNK,)] = [self.d * types1 / total1 / self.vocab_size, None]
        out[1][(BOS,)] = [0.0, None]
        for n in range(1, n_max):
            for gram, entry in out[n].items():
                if gram[0] == BOS:
                    words = gram[1:]
                    bow = 1.0
                    for k in range(n_max - 1 - len(words), 0, -1):
                        bow *= self._gamma((BOS,) * k + words)
                    entry[1] = bow
                elif gram != (UNK,):
                    entry[1] = self._gamma(gram)
        return [{g: tuple(e) for g, e in level.items()} for level in out]

    def write_arpa(self, path: str | os.PathLike) -> Path:
        """Write the model as an ARPA file (atomically); returns the path."""
        from speechkd.io import atomic_write_text

        def log10(x: float) -> str:
            return f"{math.log10(x):.7f}" if x > 0 else "-99"

        levels = self.arpa_entries()
        lines = ["\\data\\", *(f"ngram {n}={len(levels[n])}" for n in range(1, self.order + 1)), ""]
        for n in range(1, self.order + 1):
            lines.append(f"\\{n}-grams:")
            for gram, (p, bow) in sorted(levels[n].items()):
                row = f"{log10(p)}\t{' '.join(gram)}"
                lines.append(row + f"\t{log10(bow)}" if bow is not None and bow != 1.0 else row)
            lines.append("")
        lines.append("\\end\\")
        return atomic_write_text(path, "\n".join(lines) + "\n")


@lru_cache(maxsize=4)
def _normalised_lines(text_path: str | None, language: str | None) -> tuple[str, ...]:
    return tuple(normalize(s, language) for s in read_training_text(text_path))


@lru_cache(maxsize=8)
def _cached_ngram(text_path: str | None, banned: frozenset, order: int, language: str | None) -> KneserNeyLM:
    lines = [s for s in _normalised_lines(text_path, language) if s and s not in banned]
    return KneserNeyLM(lines, order=order, language=language, normalised=True)


def train_ngram(text_path: str | os.PathLike | None = None, *, exclude: Iterable[str] = (), order: int = DEFAULT_ORDER,
                language: str | None = "en") -> KneserNeyLM:
    """A KN LM on the text file (default: shipped sentence list) minus the `exclude` sentences (compared
    after normalisation). Cached: the same text, exclusions and order give the same (read-only) model."""
    banned = frozenset(normalize(s, language) for s in exclude if s) - {""}
    path = None if text_path is None else str(Path(text_path).resolve())
    return _cached_ngram(path, banned, order, language)



@dataclass(frozen=True)
class DecodingLMConfig:
    """`speechkd lm`: a word n-gram for CTC beam search, from pseudo-labels or any text."""

    text: str = ""  # labels/manifest JSONL (its `text` field) or a text file with one sentence per line
    order: int = DEFAULT_ORDER  # n of the n-gram
    discount: float = KN_DISCOUNT  # Kneser-Ney absolute discount, 0 < d < 1
    lowercase: bool = True  # must match the CTC vocabulary's (VocabConfig.lowercase)
    exclude: tuple[str, ...] = ()  # JSONL manifests or text files whose sentences must not be in the LM (tests)

    def validate(self) -> None:
        if not self.text:
            raise LMError("text is required: a labels JSONL (e.g. exp/x/labels/kept.jsonl) or a text file")
        if self.order < 1:
            raise LMError(f"order must be >= 1, got {self.order}")


@dataclass(frozen=True)
class BeamSearchFields:
    """Config fields for CTC beam search with an ARPA LM, shared by `speechkd eval` and `speechkd export`."""

    lm: str | None = None  # an ARPA word n-gram (`speechkd lm`); None: greedy decoding
    beam_size: int = BeamSearchOptions.beam_size  # prefixes kept per frame
    lm_weight: float = BeamSearchOptions.lm_weight  # weight of the LM log-probability against the acoustic one
    word_score: float = BeamSearchOptions.word_score  # bonus per word (counters the LM's bias to short outputs)
    unk_score: float = BeamSearchOptions.unk_score  # log-score of a word the LM has never seen

    def beam_options(self) -> BeamSearchOptions:
        return BeamSearchOptions(beam_size=self.beam_size, lm_weight=self.lm_weight, word_score=self.word_score,
                                 unk_score=self.unk_score)


def read_sentences(path: str | os.PathLike) -> list[str]:
    """The `text` fields of a JSONL file, or the non-empty lines of a text file."""
    p = Path(path)
    if not p.is_file():
        raise LMError(f"{p} does not exist; give a labels/manifest JSONL or a text file, one sentence per line")
    if p.suffix == ".jsonl":
        from speechkd.io import read_jsonl

        rows = list(read_jsonl(p))
        if rows and not any("text" in r for r in rows):
            raise LMError(f"{p} has no `text` field; give pseudo-labels (speechkd label/filter output) or a manifest")
        return [r["text"] for r in rows if r.get("text")]
    return read_training_text(p)


def build_decoding_lm(cfg: DecodingLMConfig, out_path: str | os.PathLike) -> dict:
    """Train a KN n-gram on cfg.text, normalised like CTC labels (speechkd.vocab), and write it as ARPA.

    Returns a summary (sentences, words, vocabulary, n-gram counts). The config is saved beside the file.
    """
    from speechkd.config import save_config
    from speechkd.vocab import normalize_label

    cfg.validate()
    banned = {normalize_label(t, cfg.lowercase) for ex in cfg.exclude for t in read_sentences(ex)}
    lines = [normalize_label(t, cfg.lowercase) for t in read_sentences(cfg.text)]
    kept = [t for t in lines if t and t not in banned]
    lm = KneserNeyLM(kept, order=cfg.order, discount=cfg.discount, normalised=True)
    out = lm.write_arpa(out_path)
    save_config(cfg, out.with_suffix(".yaml"))
    return {"arpa": str(out), "sentences": len(kept), "excluded": len(lines) - len(kept),
            "words": sum(len(t.split()) for t in kept), "vocabulary": len(lm.vocab) - 1,
            "order": cfg.order}


class HFCausalLMScorer:
    """Per-word NLL of normalised text under any `AutoModelForCausalLM` (dir or Hub id)."""

    def __init__(self, name_or_path: str, *, device: str = "cpu", batch_size: int = HF_BATCH_SIZE):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is a core dependency
            raise LMError("the HF language-model scorer needs `transformers` (pip install transformers)") from e
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
        except (OSError, ValueError) as e:
            raise LMError(f"cannot load a causal LM from {name_or_path!r}: {e}. Give a save_pretrained directory "
                          "or a Hub id (Hub ids need network access; set lm_model: ngram to use the built-in LM)") from e
        self.device, self.batch_size = device, batch_size
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        if bos is None:
            raise LMError(f"{name_or_path}: the tokenizer has neither a BOS nor an EOS token to start a sentence with")
        self.bos = bos

    def score(self, texts: Sequence[str], languages: Sequence[str | None]) -> list[float]:
        import torch

        out: list[float] = []
        norm = [normalize(t, lang) for t, lang in zip(texts, languages)]
        for k in range(0, len(norm), self.batch_size):
            chunk = norm[k : k + self.batch_size]
            ids = [[self.bos] + self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.bos] for t in chunk]
            width = max(map(len, ids))
            inp = torch.full((len(ids), width), self.bos, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, seq in enumerate(ids):
                inp[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=inp.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, inp[:, 1:, None].to(self.device))[..., 0]
            nll = -(logp * mask[:, 1:].to(self.device)).sum(-1)
            for t, v in zip(chunk, nll.tolist()):
                out.append(v / (len(t.split()) + 1))  # per word (+ end of sentence), like the n-gram LM
        return out


def load_text_scorer(spec: str = "ngram", *, text_path: str | os.PathLike | None = None, exclude: Iterable[str] = (),
                     order: int = DEFAULT_ORDER, device: str = "cpu"
                     ) -> Callable[[Sequence[str], Sequence[str | None]], list[float]]:
    """A function (texts, languages) -> per-word NLL list: the built-in n-gram LM or a HF causal LM."""
    if spec == "ngram":
        lm = train_ngram(text_path, exclude=exclude, order=order)
        return lambda texts, langs: [lm.nll_per_word(t, lang) for t, lang in zip(texts, langs)]
    return HFCausalLMScorer(spec, device=device).score
