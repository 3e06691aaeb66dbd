"""Output vocabularies for CTC students, saved as a sherpa-onnx compatible tokens.txt.

Normalisation rule (applied to every label before it is encoded, and stated once here):
  1. Unicode NFKC, then lower-case (``lowercase: true``, the default);
  2. typographic apostrophes (’ ‘ ʼ `) become ``'``;
  3. letters (Unicode category L*), digits (N*), ``'`` and spaces are kept;
     other punctuation (P*) — hyphens, dashes, slashes, full stops... — becomes a space, so
     "well-known" reads "well known"; every other character (symbols, emoji, controls) is removed;
  4. runs of whitespace collapse to one space, ends are stripped.
After normalisation, a character missing from the vocabulary (seen at training time too rarely, or only in
new text) is DROPPED from the label and counted in :class:`OOVStats` — never an error.

Token ids: ``<blk>`` (the CTC blank) is 0. A word boundary is written ``▁`` (U+2581), so decoding any
vocabulary is "join the symbols, turn ▁ into spaces" — exactly what sherpa-onnx does with tokens.txt
(one ``symbol id`` per line). The character vocabulary has ``▁`` as its own token; the optional BPE
vocabulary (trained with `tokenizers` on the labels) puts ``▁`` at the start of word-initial pieces.

    vocab = build_vocabulary(texts, VocabConfig(kind="char"))
    ids = vocab.encode("Hello, world!")   # "hello world"
    vocab.decode(ids)                     # "hello world"
    vocab.save(out_dir); Vocabulary.load(out_dir)
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

from speechkd.io import atomic_write_json, atomic_write_text
from speechkd.errors import SpeechkdError
from speechkd_runtime.beam import SPACE, ids_to_text
from speechkd_runtime.ctc import BLANK_SYMBOL as BLANK

UNK = "<unk>"  # only inside the BPE trainer; never an output token
TOKENS_FILE = "tokens.txt"
VOCAB_META_FILE = "vocab.json"
BPE_FILE = "bpe.json"
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})


class VocabError(SpeechkdError, ValueError):
    """A vocabulary that cannot be built or loaded; the message names the file and the fix."""


@dataclass(frozen=True)
class VocabConfig:
    kind: Literal["char", "bpe"] = "char"
    lowercase: bool = True
    min_count: int = 1  # char: characters seen fewer times in the labels stay out (their uses count as OOV)
    bpe_vocab_size: int = 256  # bpe: size including <blk>

    def validate(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.kind == "bpe" and self.bpe_vocab_size < 8:
            raise ValueError(f"bpe_vocab_size must be >= 8, got {self.bpe_vocab_size}")


@dataclass
class OOVStats:
    """What encode() dropped: characters missing from the vocabulary, per character."""

    num_labels: int = 0
    num_chars: int = 0  # characters of the normalised labels (spaces included)
    dropped: Counter = field(default_factory=Counter)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {"num_labels": self.num_labels, "num_chars": self.num_chars, "num_dropped": self.num_dropped,
                "dropped_rate": round(self.num_dropped / max(1, self.num_chars), 6),
                "dropped_chars": dict(self.dropped.most_common())}


def normalize_label(text: str, lowercase: bool = True) -> str:
    """The normalisation rule in the module docstring."""
    text = unicodedata.normalize("NFKC", text or "")
    if lowercase:
        text = text.lower()
    text = text.translate(_APOSTROPHES)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "'" or cat[0] in "LN":
            out.append(ch)
        elif cat[0] == "P" or ch.isspace():
            out.append(" ")
        # Symbols, marks without a base, controls: removed.
    return re.sub(r"\s+", " ", "".join(out)).strip()


class Vocabulary:
    """tokens[i] is the symbol of id i; tokens[0] is the blank."""

    def __init__(self, tokens: Sequence[str], kind: str = "char", lowercase: bool = True, bpe=None):
        self.tokens = list(tokens)
        self.kind = kind
        self.lowercase = lowercase
        self.blank_id = 0
        self._bpe = bpe  # tokenizers.Tokenizer for kind "bpe"
        if not self.tokens or self.tokens[0] != BLANK:
            raise VocabError(f"the first token must be the blank {BLANK!r}, got {self.tokens[:1]}")
        if len(set(self.tokens)) != len(self.tokens):
            dup = [t for t, c in Counter(self.tokens).items() if c > 1]
            raise VocabError(f"duplicate tokens {dup[:5]}")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self.kind!r}, size={len(self)})"

    def normalize(self, text: str) -> str:
        return normalize_label(text, self.lowercase)

    def encode(self, text: str, stats: OOVStats | None = None) -> list[int]:
        """Ids of a label after normalisation; unknown characters are dropped (and counted in `stats`)."""
        norm = self.normalize(text)
        if stats is not None:
            stats.num_labels += 1
            stats.num_chars += len(norm)
        if self.kind == "bpe":
            ids, dropped = self._encode_bpe(norm)
        else:
            ids, dropped = [], []
            for ch in norm.replace(" ", SPACE):
                i = self.index.get(ch)
                (ids.append(i) if i is not None else dropped.append(ch))
            if dropped:  # dropping a character may leave "▁▁" or a leading/trailing "▁"
                ids = _tidy_spaces(ids, self.index[SPACE]) if SPACE in self.index else ids
        if stats is not None:
            stats.dropped.update(dropped)
        return ids

    def _encode_bpe(self, norm: str) -> tuple[list[int], list[str]]:
        enc = self._bpe.encode(norm)
        ids, dropped = [], []
        for piece, (start, end) in zip(enc.tokens, enc.offsets):
            i = self.index.get(piece)
            if i is None or piece == UNK:
                dropped.extend(ch for ch in norm[start:end] if ch != " ")
            else:
                ids.append(i)
        return ids, dropped

    def decode(self, ids: Iterable[int]) -> str:
        """Text of (already CTC-collapsed) ids as the on-device runtime writes it (ids_to_text); blanks are ignored."""
        return ids_to_text([i for i in ids if i != self.blank_id and 0 <= i < len(self.tokens)], self.tokens)

    # --- files ------------------------------------------------------------------------------------

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / TOKENS_FILE, "".join(f"{t} {i}\n" for i, t in enumerate(self.tokens)))
        if self._bpe is not None:
            atomic_write_text(out / BPE_FILE, self._bpe.to_str())
        atomic_write_json(out / VOCAB_META_FILE, {"kind": self.kind, "lowercase": self.lowercase,
                                                  "blank_id": self.blank_id, "size": len(self)})
        return out / TOKENS_FILE

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "Vocabulary":
        d = Path(model_dir)
        path = d / TOKENS_FILE
        if not path.is_file():
            raise VocabError(f"{d} has no {TOKENS_FILE}; it is written by Vocabulary.save beside the model")
        tokens = read_tokens(path)
        meta = json.loads((d / VOCAB_META_FILE).read_text()) if (d / VOCAB_META_FILE).is_file() else {}
        kind = meta.get("kind", "char")
        bpe = None
        if kind == "bpe":
            from tokenizers import Tokenizer

            if not (d / BPE_FILE).is_file():
                raise VocabError(f"{d}: {VOCAB_META_FILE} says kind 'bpe' but {BPE_FILE} is missing")
            bpe = Tokenizer.from_file(str(d / BPE_FILE))
        return cls(tokens, kind=kind, lowercase=meta.get("lowercase", True), bpe=bpe)


def _tidy_spaces(ids: list[int], space: int) -> list[int]:
    out: list[int] = []
    for i in ids:
        if i == space and (not out or out[-1] == space):
            continue
        out.append(i)
    while out and out[-1] == space:
        out.pop()
    return out


def read_tokens(path: str | os.PathLike) -> list[str]:
    """tokens.txt ("symbol id" per line, ids 0..V-1 in any order) as a list indexed by id."""
    by_id: dict[int, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        sym, _, idx = line.rpartition(" ")
        if not sym or not idx.isdigit():
            raise VocabError(f"{path}:{n}: expected 'symbol id', got {line!r}")
        by_id[int(idx)] = sym
    if sorted(by_id) != list(range(len(by_id))):
        raise VocabError(f"{path}: ids must be 0..{len(by_id) - 1} without gaps")
    return [by_id[i] for i in range(len(by_id))]


def build_vocabulary(texts: Iterable[str], cfg: VocabConfig = VocabConfig()) -> Vocabulary:
    """A vocabulary from training labels (deterministic: characters sorted by code point)."""
    norms = [normalize_label(t, cfg.lowercase) for t in texts if t]
    norms = [t for t in norms if t]
    if not norms:
        raise VocabError("no usable label text to build a vocabulary from (all labels empty after normalisation)")
    if cfg.kind == "bpe":
        return _build_bpe(norms, cfg)
    counts = Counter(ch for t in norms for ch in t if ch != " ")
    chars = sorted(ch for ch, c in counts.items() if c >= cfg.min_count)
    return Vocabulary([BLANK, SPACE, *chars], kind="char", lowercase=cfg.lowercase)


def _build_bpe(norms: list[str], cfg: VocabConfig) -> Vocabulary:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # Metaspace marks word starts with ▁ (SentencePiece style), which is what sherpa-onnx expects.
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=cfg.bpe_vocab_size, special_tokens=[UNK], show_progress=False,
                                  min_frequency=cfg.min_count)
    tok.train_from_iterator(norms, trainer)
    pieces = [p for p, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if p != UNK]
    return Vocabulary([BLANK, *pieces], kind="bpe", lowercase=cfg.lowercase, bpe=tok)
