"""Pseudo-label filtering, with references (Distil-Whisper) and without (uDistil-Whisper), and its report.

Every scorer maps label records to one **badness** number per record: higher always means "more likely a
bad label", whatever the underlying quantity (log-probability is negated, agreement becomes disagreement),
so thresholds read the same way everywhere (drop when badness > threshold), scorers rank-average into a
combined score without sign bookkeeping, and AUROC is computed the same way for all of them.

| scorer       | badness                                                                  | needs                 |
|--------------|--------------------------------------------------------------------------|-----------------------|
| `wer_ref`    | WER % of the label against the reference (supervised, Distil-Whisper)    | `reference`           |
| `nll`        | -avg_logprob: normalised negative log-likelihood, nats per text token    | `avg_logprob`         |
| `entropy`    | mean next-token entropy over text tokens, nats                           | `mean_entropy`        |
| `no_speech`  | Whisper's no-speech probability                                          | `no_speech_prob`      |
| `compression`| gzip compression ratio of the text (repetition loops compress well)      | `text`                |
| `repeats`    | share of word n-grams that repeat an earlier one in the same label       | `text`                |
| `guard`      | 1 when a decoding guard cut the label (loop, budget) or the text repeats | `text` (`guard`)      |
|              | a unit > 10 times; else 0.1 x temperature fallbacks                      |                       |
| `rate`       | robust z-score of log(characters or words per second) vs the set median  | `text`, `duration`    |
| `sample_wer` | mean WER % of the sampled hypotheses against the greedy label            | `hypotheses`          |
| `proxy_wer`  | WER % of the label against a second, different model's transcript        | proxy labels file     |
| `lm`         | per-word NLL of the normalised text under a language model               | `text`                |
| `combined`   | mean of the chosen scorers' normalised ranks (rank average)              | its members           |

Selection: `threshold` keeps a record when no scorer with a threshold exceeds it (a score that cannot be
computed, NaN, never drops a record); `fraction` keeps the `keep_fraction` of records with the lowest
`rank_by` badness (NaN ranks last); `both` requires both. Scorers without a threshold only rank and report.

Add a scorer with `@register_scorer(name, needs=..., description=...)` on a function
`(records, ctx) -> sequence of floats`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np

from speechkd.config import ConfigError, save_config, to_dict
from speechkd.io import OutputPaths, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from speechkd_runtime.guards import compression_ratio, text_repetition
from speechkd.errors import SpeechkdError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- constants

REPORT_WER_THRESHOLDS_PCT = (10.0, 20.0, 50.0)  # "bad label" = WER above t, for AUROC and precision/recall
# Default thresholds (drop when badness > value). Sources: Distil-Whisper keeps WER < 10 % (English);
# Whisper's own fallback heuristics use logprob < -1, no_speech > 0.6 and compression ratio > 2.4; a robust
# z-score beyond 3.5 is the usual outlier cut (Iglewicz & Hoaglin). The agreement and repetition values are
# set a priori ("disagrees on more than a third of the words", "a quarter of the n-grams are repeats"),
# not fitted to any benchmark. Entropy and LM scores have no model-independent scale: they rank only.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "wer_ref": 10.0,
    "nll": 1.0,
    "no_speech": 0.6,
    "compression": 2.4,
    "guard": 0.5,  # drops every label a guard had to cut (and text loops); fallbacks alone only rank
    "repeats": 0.25,
    "rate": 3.5,
    "sample_wer": 30.0,
    "proxy_wer": 30.0,
}
# The continuous uncertainty/disagreement measures; the hallucination heuristics (compression, repeats,
# no_speech, rate) are outlier detectors, flat for most labels, and would only add noise to a rank average.
DEFAULT_COMBINE = ("proxy_wer", "sample_wer", "nll", "entropy")
MAD_TO_SIGMA = 1.4826  # MAD * this estimates the standard deviation of a normal distribution
RATE_SMOOTHING = 0.5  # added to the character/word count so an empty label has a finite (very low) rate

# What produces each record field, for error messages.
FIELD_SOURCE = {
    "text": "`speechkd label` (every record has it)",
    "avg_logprob": "`speechkd label` (any config)",
    "mean_entropy": "`speechkd label` (any config)",
    "no_speech_prob": "`speechkd label` (any config)",
    "duration": "`speechkd label` (any config)",
    "hypotheses": "`speechkd label --num-samples K` with K >= 1",
    "reference": "labelling data that has references: a `text` column in the manifest / metadata",
}


class FilterError(SpeechkdError, ValueError):
    """Filtering that cannot run or produced nothing usable; the message says which field/filter and what to do."""


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FilterConfig:
    scorers: tuple[str, ...] = ()  # () = every label-free scorer the records support (+ proxy_wer with proxy labels)
    thresholds: dict[str, float | None] = field(default_factory=dict)  # overrides of DEFAULT_THRESHOLDS; None = rank only
    select: Literal["threshold", "fraction", "both"] = "threshold"  # drop by thresholds, keep a fraction, or both
    keep_fraction: float = 0.7  # for select fraction/both
    rank_by: str = "combined"  # the scorer that orders records for select fraction/both
    combine: tuple[str, ...] = ()  # scorers rank-averaged into `combined`; () = DEFAULT_COMBINE among those computed
    proxy_labels: str | None = None  # labels JSONL of the same audio by a different model (proxy_wer)
    proxy_missing: Literal["error", "nan"] = "error"  # a label id absent from the proxy file: fail, or NaN (never drops)
    rate_unit: Literal["chars", "words"] = "chars"  # unit of the speaking-rate scorer (per second of audio)
    repeat_ngram: int = 3  # n of the word n-grams counted by `repeats`
    lm_model: str = "ngram"  # built-in KN n-gram LM, or a HF causal LM dir / Hub id
    lm_text: str | None = None  # n-gram training text (one sentence a line); None = the shipped sentence list
    lm_order: int = 3  # n of the built-in n-gram LM
    lm_exclude: tuple[str, ...] = ()  # files whose sentences are removed from the LM training text (see README)
    lm_exclude_references: bool = True  # also remove the filtered records' own references (no leakage)
    language: str | None = None  # normaliser language; None = each record's `language` (default en)
    report_wer_thresholds: tuple[float, ...] = REPORT_WER_THRESHOLDS_PCT  # WER % cut-offs of the report's AUROCs

    def validate(self) -> None:
        known = sorted(SCORERS) + ["combined"]
        for name in self.scorers:
            if name not in SCORERS:
                raise ValueError(f"scorers: unknown scorer {name!r}; choose from {sorted(SCORERS)}")
        for name in self.combine:
            if name not in SCORERS:
                raise ValueError(f"combine: unknown scorer {name!r}; choose from {sorted(SCORERS)}")
        for name, value in self.thresholds.items():
            if name not in known:
                raise ValueError(f"thresholds: unknown scorer {name!r}; choose from {known}")
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"thresholds: {name} = {value!r} must be a finite number (or null: rank only)")
        if self.rank_by not in known:
            raise ValueError(f"rank_by: unknown scorer {self.rank_by!r}; choose from {known}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.repeat_ngram < 1:
            raise ValueError(f"repeat_ngram must be >= 1, got {self.repeat_ngram}")
        if self.lm_order < 1:
            raise ValueError(f"lm_order must be >= 1, got {self.lm_order}")
        if not self.report_wer_thresholds or any(t < 0 for t in self.report_wer_thresholds):
            raise ValueError("report_wer_thresholds must be non-empty percentages >= 0")

    def threshold(self, name: str) -> float | None:
        if name in self.thresholds:
            v = self.thresholds[name]
            return None if v is None else float(v)
        return DEFAULT_THRESHOLDS.get(name)


def with_thresholds(cfg: FilterConfig, items: Iterable[str]) -> FilterConfig:
    """Apply `NAME=VALUE` strings (VALUE `none` = rank only) from the command line to a config."""
    new = dict(cfg.thresholds)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--threshold {item!r}: write NAME=VALUE, e.g. --threshold proxy_wer=25")
        try:
            new[name.strip()] = None if value.strip().lower() in ("none", "null") else float(value)
        except ValueError:
            raise ConfigError(f"--threshold {item!r}: {value!r} is not a number") from None
    out = replace(cfg, thresholds=new)
    try:
        out.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return out


# ------------------------------------------------------------------------------------------- registry


@dataclass
class ScoreContext:
    """What scorers may use besides the records: the config, proxy transcripts, and a cache."""

    cfg: FilterConfig
    proxy: dict[str, str] | None = None
    cache: dict = field(default_factory=dict)

    def language(self, rec: dict) -> str:
        return self.cfg.language or rec.get("language") or "en"

    def words(self, rec: dict) -> list[str]:
        """The record's label text, Whisper-normalised, as words (cached: several scorers need it)."""
        from speechkd.text import normalize

        key = ("words", rec["text"], self.language(rec))
        if key not in self.cache:
            self.cache[key] = normalize(rec["text"], self.language(rec)).split()
        return self.cache[key]


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: Callable[[list[dict], ScoreContext], Sequence[float]]
    needs: tuple[str, ...]
    description: str  # what the badness is
    supervised: bool = False
    needs_proxy: bool = False


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, *, needs: tuple[str, ...] = (), description: str, supervised: bool = False,
                    needs_proxy: bool = False) -> Callable:
    def wrap(fn):
        SCORERS[name] = Scorer(name, fn, tuple(needs), description, supervised, needs_proxy)
        return fn

    return wrap


def _wer(reference: str, hypothesis: str, language: str) -> float:
    from speechkd.metrics import utterance_wer

    return utterance_wer(reference or "", hypothesis or "", language=language)


@register_scorer("wer_ref", needs=("reference",), supervised=True,
                 description="WER % of the label against the reference (Whisper-normalised)")
def score_wer_ref(records, ctx):
    return [_wer(r["reference"], r["text"], ctx.language(r)) for r in records]


@register_scorer("nll", needs=("avg_logprob",), description="-avg_logprob: NLL per text token, nats")
def score_nll(records, ctx):
    return [-float(r["avg_logprob"]) for r in records]


@register_scorer("entropy", needs=("mean_entropy",), description="mean next-token entropy, nats")
def score_entropy(records, ctx):
    return [float(r["mean_entropy"]) for r in records]


@register_scorer("no_speech", needs=("no_speech_prob",), description="no-speech probability")
def score_no_speech(records, ctx):
    return [float(r["no_speech_prob"]) for r in records]


@register_scorer("compression", needs=("text",), description="gzip compression ratio of the text")
def score_compression(records, ctx):
    return [compression_ratio(r["text"]) for r in records]


GUARD_FALLBACK_WEIGHT = 0.1  # badness per temperature fallback: 5 fallbacks stay at the 0.5 threshold


@register_scorer("guard", needs=("text",),
                 description="1 if a decoding guard cut the label or its text loops, else 0.1 x fallbacks")
def score_guard(records, ctx):
    out = []
    for r in records:
        guard = r.get("guard") or {}  # labels made before the guards have none: the text rule still applies
        cut = bool(guard.get("cut")) or text_repetition(r["text"])
        out.append(1.0 if cut else GUARD_FALLBACK_WEIGHT * float(guard.get("fallbacks", 0)))
    return out


def repeated_ngram_share(words: Sequence[str], n: int) -> float:
    """Share of the word n-grams that already occurred earlier in the same text (0 = no repeats)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@register_scorer("repeats", needs=("text",), description="share of repeated word n-grams")
def score_repeats(records, ctx):
    return [repeated_ngram_share(ctx.words(r), ctx.cfg.repeat_ngram) for r in records]


def robust_z(values: np.ndarray) -> np.ndarray:
    """|x - median| / (1.4826 MAD): about |z| for normal data, unmoved by the outliers it should find."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full_like(values, np.nan)
    med = float(np.median(finite))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(finite - med)))
    if scale <= 1e-9:  # most values identical: fall back to the standard deviation, then to 1
        scale = float(np.std(finite)) or 1.0
    return np.abs(values - med) / scale


@register_scorer("rate", needs=("text", "duration"),
                 description="robust |z| of log speaking rate (characters or words per second) vs the set")
def score_rate(records, ctx):
    log_rates = []
    for r in records:
        words = ctx.words(r)
        count = sum(map(len, words)) if ctx.cfg.rate_unit == "chars" else len(words)
        dur = float(r["duration"])
        log_rates.append(math.log((count + RATE_SMOOTHING) / dur) if dur > 0 else math.nan)
    return robust_z(np.asarray(log_rates, dtype=float))


@register_scorer("sample_wer", needs=("hypotheses",),
                 description="mean WER % of sampled hypotheses against the greedy label")
def score_sample_wer(records, ctx):
    out = []
    for r in records:
        hyps = r["hypotheses"]
        lang = ctx.language(r)
        out.append(float(np.mean([_wer(r["text"], h, lang) for h in hyps])) if hyps else math.nan)
    return out


@register_scorer("proxy_wer", needs=("text",), needs_proxy=True,
                 description="WER % of the label against the proxy model's transcript")
def score_proxy_wer(records, ctx):
    proxy = ctx.proxy or {}
    return [_wer(proxy[r["id"]], r["text"], ctx.language(r)) if r["id"] in proxy else math.nan for r in records]


@register_scorer("lm", needs=("text",), description="per-word NLL of the normalised text under the LM, nats")
def score_lm(records, ctx):
    from speechkd.lm import LMError, load_text_scorer

    cfg = ctx.cfg
    exclude: set[str] = set()
    for path in cfg.lm_exclude:
        exclude.update(read_sentences(path))
    if cfg.lm_exclude_references:
        exclude.update(r["reference"] for r in records if r.get("reference"))
    try:
        scorer = load_text_scorer(cfg.lm_model, text_path=cfg.lm_text, exclude=exclude, order=cfg.lm_order)
    except LMError as e:
        raise FilterError(f"lm scorer: {e}") from e
    return scorer([r["text"] for r in records], [ctx.language(r) for r in records])


def read_sentences(path: str | os.PathLike) -> list[str]:
    """Sentences of a file for `lm_exclude`: JSONL (`reference` and `text` of each line) or plain text lines."""
    p = Path(path)
    if not p.is_file():
        raise FilterError(f"lm_exclude: {p} does not exist")
    if p.suffix == ".jsonl":
        out = []
        for rec in read_jsonl(p):
            out += [rec[k] for k in ("reference", "text") if isinstance(rec.get(k), str)]
        return out
    return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------- rank maths


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (NaN must be removed beforehand)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    _, starts, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a random positive scores higher than a random negative (ties count 1/2).

    Mann-Whitney U from average ranks; records with a NaN score are left out; NaN when a class is empty.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    ok = ~np.isnan(s)
    s, y = s[ok], y[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def rank_average(columns: Sequence[Sequence[float]]) -> np.ndarray:
    """Per record, the mean over columns of rank/n (in (0, 1]; NaN entries skipped; NaN if all are NaN)."""
    cols = [np.asarray(c, dtype=float) for c in columns]
    if not cols:
        raise ValueError("rank_average needs at least one column")
    n = len(cols[0])
    total, count = np.zeros(n), np.zeros(n)
    for c in cols:
        ok = ~np.isnan(c)
        if ok.any():
            total[ok] += average_ranks(c[ok]) / ok.sum()
            count[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def lowest_fraction(badness: Sequence[float], fraction: float) -> np.ndarray:
    """Mask of the round(fraction * n) records with the lowest badness (NaN last; stable on ties)."""
    b = np.asarray(badness, dtype=float)
    k = int(round(fraction * len(b)))
    order = np.argsort(np.where(np.isnan(b), np.inf, b), kind="mergesort")
    nan_last = np.concatenate([order[~np.isnan(b[order])], order[np.isnan(b[order])]])
    mask = np.zeros(len(b), dtype=bool)
    mask[nan_last[:k]] = True
    return mask


# ------------------------------------------------------------------------------------------ filtering


def _missing(records: list[dict], key: str) -> list[str]:
    return [str(r.get("id", f"#{i}")) for i, r in enumerate(records) if r.get(key) is None]


def _require(records: list[dict], scorer: Scorer) -> None:
    for key in scorer.needs:
        missing = _missing(records, key)
        if not missing:
            continue
        if scorer.supervised and key == "reference":
            raise FilterError(
                f"the supervised filter {scorer.name!r} needs references, but {len(missing)} of {len(records)} "
                f"records have no `reference` (e.g. {', '.join(missing[:3])}). Label data that has a `text` "
                "column to get references, or use the label-free scorers (leave out wer_ref)")
        raise FilterError(
            f"scorer {scorer.name!r} needs the field `{key}`, missing in {len(missing)} of {len(records)} records "
            f"(e.g. {', '.join(missing[:3])}); it is produced by {FIELD_SOURCE.get(key, 'the labelling step')}")


def _available(records: list[dict], scorer: Scorer, has_proxy: bool) -> str | None:
    """Why `scorer` cannot run on these records (None if it can)."""
    if scorer.needs_proxy and not has_proxy:
        return "no proxy labels (give proxy_labels / --proxy-labels: the same audio labelled by another model)"
    for key in scorer.needs:
        if _missing(records, key):
            return f"records lack `{key}` (produced by {FIELD_SOURCE.get(key, 'the labelling step')})"
    if scorer.name == "sample_wer" and not any(r.get("hypotheses") for r in records):
        return "no sampled hypotheses (produced by `speechkd label --num-samples K`)"
    return None


def load_proxy(proxy: Sequence[dict] | Mapping[str, Any] | str | os.PathLike, records: list[dict],
               missing: str = "error") -> dict[str, str]:
    """id -> proxy transcript, checked: a different model, and every label id covered (or NaN by rule)."""
    where = "proxy labels"
    if isinstance(proxy, (str, os.PathLike)):
        where = str(proxy)
        if not Path(proxy).is_file():
            raise FilterError(f"proxy labels file {proxy} does not exist; make it with `speechkd label --data <same "
                              "data> --teacher <a different model> --out <file>`")
        proxy = list(read_jsonl(proxy))
    if isinstance(proxy, Mapping):
        texts = {str(k): (v["text"] if isinstance(v, Mapping) else str(v)) for k, v in proxy.items()}
        proxy_recs = [v for v in proxy.values() if isinstance(v, Mapping)]
    else:
        proxy_recs = list(proxy)
        bad = [i for i, r in enumerate(proxy_recs) if "id" not in r or r.get("text") is None]
        if bad:
            raise FilterError(f"{where}: record {bad[0] + 1} has no `id` or `text`; give a labels JSONL from "
                              "`speechkd label`")
        texts = {str(r["id"]): r["text"] for r in proxy_recs}
    teachers = {_teacher_key(r) for r in records} - {None}
    proxy_teachers = {_teacher_key(r) for r in proxy_recs} - {None}
    if teachers and teachers & proxy_teachers:
        raise FilterError(f"{where} come from the same model as the labels ({sorted(teachers & proxy_teachers)[0]}); "
                          "proxy agreement needs a different model's transcripts (e.g. bundled:tiny.en for bundled:base)")
    absent = [r["id"] for r in records if r["id"] not in texts]
    if absent and missing == "error":
        raise FilterError(f"{len(absent)} of {len(records)} label ids have no transcript in {where} "
                          f"(e.g. {', '.join(map(str, absent[:3]))}); label the same data with the proxy model, "
                          "or set proxy_missing: nan (those records get proxy_wer = NaN, which never drops them)")
    return texts


def _teacher_key(rec: Mapping) -> str | None:
    t = rec.get("teacher")
    if isinstance(t, Mapping) and t.get("name"):
        return f"{t.get('name')}@{t.get('revision')}"
    return None


def _resolve_scorers(records: list[dict], cfg: FilterConfig, has_proxy: bool) -> tuple[list[str], dict[str, str]]:
    skipped: dict[str, str] = {}
    if cfg.scorers:
        names = list(dict.fromkeys(cfg.scorers))
        for name in names:
            s = SCORERS[name]
            if s.needs_proxy and not has_proxy:
                raise FilterError(f"scorer {name!r} needs proxy labels: give proxy_labels (--proxy-labels FILE), the "
                                  "same audio labelled by a different model (`speechkd label --teacher ...`)")
            _require(records, s)
        extra = [c for c in cfg.combine if c not in names]
        if extra:
            raise FilterError(f"combine lists {extra}, which are not among the scorers {names}; add them to scorers")
        return names, skipped
    names = []
    for name, s in SCORERS.items():
        if s.supervised:
            continue
        why = _available(records, s, has_proxy)
        if why is None:
            names.append(name)
        else:
            skipped[name] = why
    for name in cfg.combine:
        if name not in names:
            raise FilterError(f"combine lists {name!r}, which cannot run on these records: "
                              f"{skipped.get(name, 'supervised scorers are never chosen automatically; list it in scorers')}")
    return names, skipped


def _check_records(records: list[dict]) -> None:
    if not records:
        raise FilterError("no label records to filter (is the labels file empty?)")
    no_id = [i for i, r in enumerate(records) if "id" not in r]
    if no_id:
        raise FilterError(f"record {no_id[0] + 1} has no `id`; filter records written by `speechkd label`")
    seen: set = set()
    dup = [r["id"] for r in records if r["id"] in seen or seen.add(r["id"])]
    if dup:
        raise FilterError(f"duplicate ids in the labels ({', '.join(map(str, dup[:3]))}); ids must be unique")
    missing_text = _missing(records, "text")
    if missing_text:
        raise FilterError(f"{len(missing_text)} records have no `text` (e.g. {', '.join(missing_text[:3])}); "
                          f"it is produced by {FIELD_SOURCE['text']}")


def _plain(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def filter_labels(records: Iterable[dict], cfg: FilterConfig = FilterConfig(), proxy=None) -> tuple[list[dict], dict]:
    """Score every record, decide `keep`, and build the report.

    Returns (records, report): copies of the input records with `scores` {name: badness or None} and `keep`,
    plus `drop_reasons` (the filters that dropped it) — and the report dict (see `format_report`).
    `proxy`: a second model's labels (list of records, id -> record/text mapping, or a JSONL path);
    falls back to `cfg.proxy_labels`.
    """
    records = [dict(r) for r in records]
    _check_records(records)
    proxy = proxy if proxy is not None else cfg.proxy_labels
    ctx = ScoreContext(cfg, load_proxy(proxy, records, cfg.proxy_missing) if proxy is not None else None)
    names, skipped = _resolve_scorers(records, cfg, ctx.proxy is not None)
    if not names:
        raise FilterError(f"no scorer can run on these records: {skipped}")
    scores: dict[str, np.ndarray] = {}
    for name in names:
        values = np.asarray(SCORERS[name].fn(records, ctx), dtype=float)
        if values.shape != (len(records),):
            raise FilterError(f"scorer {name!r} returned {values.shape} values for {len(records)} records")
        scores[name] = values
    members = list(cfg.combine) if cfg.combine else [c for c in DEFAULT_COMBINE if c in scores]
    if members:
        scores["combined"] = rank_average([scores[m] for m in members])
    if cfg.select != "threshold" and cfg.rank_by not in scores:
        raise FilterError(f"rank_by {cfg.rank_by!r} was not computed (scorers: {sorted(scores)}); "
                          "add it to scorers or choose another rank_by")

    over: dict[str, np.ndarray] = {}  # every scorer with a threshold: who exceeds it (NaN never does)
    for name, values in scores.items():
        t = cfg.threshold(name)
        if t is not None:
            over[name] = np.nan_to_num(values, nan=-np.inf) > t
    fails = over if cfg.select in ("threshold", "both") else {}
    rank_fail = None
    if cfg.select in ("fraction", "both"):
        rank_fail = ~lowest_fraction(scores[cfg.rank_by], cfg.keep_fraction)
    dropped = np.zeros(len(records), dtype=bool)
    for f in fails.values():
        dropped |= f
    if rank_fail is not None:
        dropped |= rank_fail

    for i, rec in enumerate(records):
        rec["scores"] = {name: _plain(v[i]) for name, v in scores.items()}
        rec["keep"] = bool(not dropped[i])
        reasons = [name for name, f in fails.items() if f[i]]
        if rank_fail is not None and rank_fail[i]:
            reasons.append(f"{cfg.rank_by} outside the best {cfg.keep_fraction:g}")
        rec["drop_reasons"] = reasons
    report = build_report(records, scores, over, fails, rank_fail, cfg, skipped, members)
    return records, report


# -------------------------------------------------------------------------------------------- report


def _corpus_wer(records: list[dict], language: str | None) -> float | None:
    from speechkd.metrics import score

    if not records:
        return None
    langs = {language or r.get("language") or "en" for r in records}
    lang = langs.pop() if len(langs) == 1 else "en"
    return score([r["reference"] for r in records], [r["text"] for r in records], language=lang,
                 with_alignment=False).wer


def _stats(v: np.ndarray) -> dict:
    f = v[np.isfinite(v)]
    if f.size == 0:
        return {"n_nan": int(np.isnan(v).sum())}
    return {"mean": _plain(f.mean()), "median": _plain(np.median(f)), "min": _plain(f.min()), "max": _plain(f.max()),
            "n_nan": int(np.isnan(v).sum())}


def _pr(dropped: np.ndarray, bad: np.ndarray) -> dict:
    tp = int((dropped & bad).sum())
    return {"n_bad": int(bad.sum()), "n_dropped": int(dropped.sum()), "n_bad_dropped": tp,
            "precision": _plain(tp / dropped.sum()) if dropped.any() else None,
            "recall": _plain(tp / bad.sum()) if bad.any() else None}


def build_report(records, scores, over, fails, rank_fail, cfg: FilterConfig, skipped, members) -> dict:
    n = len(records)
    keep = np.array([r["keep"] for r in records])
    dropped = ~keep
    any_other = {name: np.zeros(n, dtype=bool) for name in fails}
    for name in fails:
        for other, f in fails.items():
            if other != name:
                any_other[name] |= f
        if rank_fail is not None:
            any_other[name] |= rank_fail
    filters = {}
    for name, v in scores.items():
        scorer = SCORERS.get(name)
        entry = {
            "description": scorer.description if scorer else f"rank average of {', '.join(members)}",
            "supervised": bool(scorer and scorer.supervised),
            "threshold": cfg.threshold(name),
            "applied": name in fails,
            "stats": _stats(v),
        }
        if name in over:
            entry["n_over_threshold"] = int(over[name].sum())
        if name in fails:
            entry["n_dropped_only_by_this"] = int((fails[name] & ~any_other[name]).sum())
        filters[name] = entry
    report: dict[str, Any] = {
        "n_records": n,
        "n_kept": int(keep.sum()),
        "n_dropped": int(dropped.sum()),
        "select": cfg.select,
        "keep_fraction": cfg.keep_fraction if cfg.select != "threshold" else None,
        "rank_by": cfg.rank_by if cfg.select != "threshold" else None,
        "combined_members": members,
        "filters": filters,
        "not_run": skipped,
        "config": to_dict(cfg),
    }
    if rank_fail is not None:
        report["n_outside_fraction"] = int(rank_fail.sum())
    with_ref = np.array([isinstance(r.get("reference"), str) for r in records])
    if with_ref.any():
        report["quality"] = quality_report(records, scores, keep, with_ref, cfg)
    return report


def quality_report(records, scores, keep, with_ref, cfg: FilterConfig) -> dict:
    """Against references: AUROC of each scorer for catching WER > t, WER kept vs dropped, P/R of the drop."""
    from speechkd.metrics import utterance_wer

    idx = np.flatnonzero(with_ref)
    refd = [records[i] for i in idx]
    wer = np.array([utterance_wer(r["reference"], r["text"], language=cfg.language or r.get("language") or "en")
                    for r in refd])
    keep_r = keep[idx]
    dropped_r = ~keep_r
    q: dict[str, Any] = {
        "n_with_reference": int(len(idx)),
        "wer_all": _corpus_wer(refd, cfg.language),
        "wer_kept": _corpus_wer([r for r, k in zip(refd, keep_r) if k], cfg.language),
        "wer_dropped": _corpus_wer([r for r, k in zip(refd, keep_r) if not k], cfg.language),
        "n_bad": {}, "auroc": {}, "operating_point": {}, "per_filter": {},
    }
    for t in cfg.report_wer_thresholds:
        key = f"{t:g}"
        bad = wer > t
        q["n_bad"][key] = int(bad.sum())
        q["operating_point"][key] = _pr(dropped_r, bad)
        for name, v in scores.items():
            if SCORERS.get(name) is not None and SCORERS[name].supervised:
                continue  # a supervised scorer *is* the truth here
            q["auroc"].setdefault(name, {})[key] = _plain(auroc(v[idx], bad))
            thr = cfg.threshold(name)
            if thr is not None:
                with np.errstate(invalid="ignore"):
                    over = np.nan_to_num(v[idx], nan=-np.inf) > thr
                q["per_filter"].setdefault(name, {})[key] = _pr(over, bad)
    return q


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_report(report: dict, title: str = "Pseudo-label filter report") -> str:
    """The report as readable Markdown."""
    lines = [f"# {title}", ""]
    n, k = report["n_records"], report["n_kept"]
    best = f"the best {report['keep_fraction']:g} by `{report['rank_by']}`" if report["select"] != "threshold" else ""
    how = {"threshold": "records with every thresholded score at or below its threshold",
           "fraction": best, "both": f"records under every threshold and within {best}"}[report["select"]]
    lines += [f"**{k} of {n} kept** ({100 * k / n:.1f}%), {report['n_dropped']} dropped. Kept: {how}.", ""]
    if report.get("combined_members"):
        lines += [f"`combined` = rank average of {', '.join(f'`{m}`' for m in report['combined_members'])}.", ""]
    lines += ["All scores are *badness*: higher = more likely a bad label.", "",
              "| filter | badness | threshold | over threshold | dropped only by it | median | min | max |",
              "|---|---|---|---|---|---|---|---|"]
    for name, f in report["filters"].items():
        st = f["stats"]
        thr = "rank only" if f["threshold"] is None else _fmt(f["threshold"]) + ("" if f["applied"] else " (not applied)")
        lines.append(f"| `{name}` | {f['description'].replace('|', chr(92) + '|')} | {thr} | "
                     f"{f.get('n_over_threshold', '–')} | {f.get('n_dropped_only_by_this', '–')} | "
                     f"{_fmt(st.get('median'))} | {_fmt(st.get('min'))} | {_fmt(st.get('max'))} |")
    if report.get("n_outside_fraction") is not None:
        lines += ["", f"Outside the best {report['keep_fraction']:g} by `{report['rank_by']}`: {report['n_outside_fraction']}."]
    if report.get("not_run"):
        lines += ["", "Not run:"] + [f"- `{name}`: {why}" for name, why in report["not_run"].items()]
    q = report.get("quality")
    if q:
        ts = list(q["n_bad"])
        lines += ["", f"## Against references ({q['n_with_reference']} records)", "",
                  f"Label WER: all {_fmt(q['wer_all'], 2)}%, kept {_fmt(q['wer_kept'], 2)}%, "
                  f"dropped {_fmt(q['wer_dropped'], 2)}%.", "",
                  "AUROC of each score for catching labels with WER above t (0.5 = chance, 1 = perfect):", "",
                  "| score | " + " | ".join(f"WER > {t}% (n={q['n_bad'][t]})" for t in ts) + " |",
                  "|---|" + "---|" * len(ts)]
        for name, row in q["auroc"].items():
            lines.append(f"| `{name}` | " + " | ".join(_fmt(row.get(t)) for t in ts) + " |")
        lines += ["", "The chosen operating point (dropped = predicted bad):", "",
                  "| bad = WER > | bad | dropped | bad among dropped | precision | recall |", "|---|---|---|---|---|---|"]
        for t in ts:
            p = q["operating_point"][t]
            lines.append(f"| {t}% | {p['n_bad']} | {p['n_dropped']} | {p['n_bad_dropped']} | "
                         f"{_fmt(p['precision'])} | {_fmt(p['recall'])} |")
        if q["per_filter"]:
            t = "20" if "20" in ts else ts[0]
            lines += ["", f"Each thresholded filter alone, bad = WER > {t}%:", "",
                      "| filter | threshold | dropped | precision | recall |", "|---|---|---|---|---|"]
            for name, row in q["per_filter"].items():
                p = row[t]
                lines.append(f"| `{name}` | {_fmt(report['filters'][name]['threshold'])} | {p['n_dropped']} | "
                             f"{_fmt(p['precision'])} | {_fmt(p['recall'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- job


def run_filter(cfg: FilterConfig, labels: str | os.PathLike, out: str | os.PathLike) -> dict:
    """The `speechkd filter` job: writes kept records to `out`, all scored records, the report and the config.

    Raises FilterError (after writing the scored records and the report) when nothing is kept, rather
    than writing an empty training set.
    """
    # kept.jsonl and its siblings: .scored.jsonl, .report.json, .report.md, .config.yaml
    labels, paths = Path(labels), OutputPaths(Path(out))
    if not labels.is_file():
        raise FilterError(f"labels file {labels} does not exist; make it with `speechkd label`")
    if labels.resolve() == paths.out.resolve():
        raise FilterError(f"--out {out} is the labels file itself; choose another output path")
    records, report = filter_labels(read_jsonl(labels, strict=True), cfg)
    report["labels"] = str(labels)
    save_config(cfg, paths.sibling("config.yaml"))
    write_jsonl(paths.sibling("scored.jsonl"), records)
    atomic_write_json(paths.sibling("report.json"), report)
    atomic_write_text(paths.sibling("report.md"), format_report(report, f"Filter report: {labels.name}"))
    if report["n_kept"] == 0:
        paths.out.unlink(missing_ok=True)
        raise FilterError(f"no record survived filtering, so {paths.out} was not written. {explain_empty(report)} "
                          f"Scores of every record: {paths.sibling('scored.jsonl')}; report: {paths.sibling('report.md')}")
    write_jsonl(paths.out, [r for r in records if r["keep"]])
    log.info("kept %d of %d labels -> %s", report["n_kept"], report["n_records"], paths.out)
    return report


def explain_empty(report: dict) -> str:
    parts = [f"{name} (threshold {f['threshold']:g}) dropped {f['n_over_threshold']}"
             for name, f in report["filters"].items() if f.get("applied") and f.get("n_over_threshold")]
    if report.get("n_outside_fraction"):
        parts.append(f"rank by {report['rank_by']} dropped {report['n_outside_fraction']}")
    return (f"Of {report['n_records']} records: " + "; ".join(parts) + ". Loosen those thresholds "
            "(--threshold NAME=VALUE, or NAME=none to rank only) or select by --select fraction --keep-fraction F.")
