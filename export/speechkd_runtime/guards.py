"""Hallucination guards for Whisper decoding, shared by every Whisper path (numpy only).

Greedy Whisper decoding can fall into a loop ("i am crying i am crying ..." for 224 tokens) on hard audio, and a
loop that reaches a pseudo-label becomes a training target. The guards are the ones openai/whisper and
faster-whisper users know, plus two that cut a loop while it is being decoded:

- **temperature fallback**: decode at 0; when the result compresses too well (gzip ratio > 2.4: repeated text)
  or is unlikely (average log-probability < -1.0), decode again at the next temperature (0.2, 0.4, ... 1.0),
  unless the model says there is no speech (no-speech probability > 0.6 with that low log-probability), in which
  case the hypothesis is empty;
- **a token budget that scales with the audio** instead of a flat 224: ``min_tokens + tokens_per_second x s``;
- **a repetition rule**: a token n-gram repeated ``max_repeats`` times in a row ends the hypothesis (the repeats
  are cut); on text, the DESIGN.md rule: a character or a substring of 2+ characters repeated > 10 times in a row.

Each path supplies one function that decodes a batch at a temperature (:data:`DecodeBatch`);
:func:`decode_with_fallback` runs the schedule over it and says per utterance which guard acted. The runtime
(numpy + onnxruntime), the transformers loops and CTranslate2 all go through it, so they follow the same rules.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

STOP_EOT, STOP_BUDGET, STOP_REPETITION = "eot", "budget", "repetition"
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # v3 name first, older checkpoints second


@dataclass(frozen=True)
class WhisperGuards:
    """Hallucination guards for Whisper decoding; defaults are openai/whisper's. ``enabled: false`` is raw greedy
    decoding (one pass at temperature 0, half the decoder context as the only limit), for exact comparisons."""

    enabled: bool = True  # false: raw greedy decoding, one pass at temperature 0, no guard
    # Tried in order; the first is used for every utterance, the next ones only for those that failed a check.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4  # gzip ratio of the text above which it is a loop; None: off
    logprob_threshold: float | None = -1.0  # average log-probability per token below which to retry; None: off
    no_speech_threshold: float | None = 0.6  # with a low log-probability, above this the audio is silence; None: off
    tokens_per_second: float = 8.0  # token budget per second of audio (English speech: ~3 words/s, ~1.3 tokens each)
    min_tokens: int = 12  # budget floor, for very short clips
    max_repeats: int = 10  # an n-gram of tokens repeated this many times in a row ends the hypothesis
    max_ngram: int = 16  # longest repeated unit (tokens) the rule looks for
    seed: int = 0  # sampling at temperature > 0 is deterministic under this seed

    def validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"guards.{name} = {getattr(self, name)!r}: {why}")

        if not self.temperatures:
            bad("temperatures", "give at least one temperature, e.g. [0.0]")
        if any(not (0.0 <= t <= 2.0) for t in self.temperatures):
            bad("temperatures", "each temperature must lie in [0, 2]")
        if list(self.temperatures) != sorted(self.temperatures):
            bad("temperatures", "must increase (the fallback moves to ever higher temperatures)")
        if self.compression_ratio_threshold is not None and not self.compression_ratio_threshold > 1.0:
            bad("compression_ratio_threshold", "must be > 1 (Whisper's default is 2.4), or null to turn it off")
        if self.logprob_threshold is not None and not self.logprob_threshold < 0.0:
            bad("logprob_threshold", "must be < 0 (Whisper's default is -1.0), or null to turn it off")
        if self.no_speech_threshold is not None and not 0.0 < self.no_speech_threshold < 1.0:
            bad("no_speech_threshold", "must lie in (0, 1) (Whisper's default is 0.6), or null to turn it off")
        if not self.tokens_per_second > 0:
            bad("tokens_per_second", "must be > 0")
        if self.min_tokens < 1:
            bad("min_tokens", "must be >= 1")
        if self.max_repeats < 2:
            bad("max_repeats", "must be >= 2 (a unit must repeat to be a loop)")
        if self.max_ngram < 1:
            bad("max_ngram", "must be >= 1")

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        self.validate()

    def budget(self, seconds: float, cap: int) -> int:
        """How many tokens an utterance of ``seconds`` may decode to (never more than ``cap``)."""
        if not self.enabled:
            return cap
        return max(1, min(cap, self.min_tokens + math.ceil(self.tokens_per_second * max(0.0, seconds))))


RAW_GREEDY = WhisperGuards(enabled=False)


@dataclass
class Attempt:
    """One decoding of one utterance at one temperature, as a path's decoder returns it."""

    ids: list[int]  # text tokens, no prompt, no end-of-text
    sum_logprob: float  # of the text tokens and the end-of-text (when one was produced)
    no_speech_prob: float | None = None  # None where the path cannot tell
    stop: str = STOP_EOT  # STOP_EOT, STOP_BUDGET or STOP_REPETITION
    extra: dict = field(default_factory=dict)  # path-specific payload (per-step logits, ...), passed through

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.ids) + 1)


@dataclass
class GuardedResult:
    """The chosen hypothesis of one utterance and what the guards did to get it."""

    attempt: Attempt
    temperature: float
    fallbacks: int  # decodings after the first (0: the temperature-0 result was kept)
    compression_ratio: float
    no_speech: bool  # judged silent: the hypothesis was emptied
    cut: str | None  # STOP_BUDGET or STOP_REPETITION when the kept hypothesis was cut short, else None

    @property
    def ids(self) -> list[int]:
        return self.attempt.ids

    def record(self) -> dict:
        """What pseudo-labels store per utterance (see speechkd.label)."""
        nsp = self.attempt.no_speech_prob
        return {"temperature": self.temperature, "fallbacks": self.fallbacks,
                "compression_ratio": round(self.compression_ratio, 4), "no_speech": self.no_speech,
                "no_speech_prob": None if nsp is None else round(nsp, 4), "cut": self.cut}


# decode(indices, temperature, budgets, rngs) -> one Attempt per index, in order; rngs[k] draws row k's samples
DecodeBatch = Callable[[list[int], float, list[int], list[np.random.Generator]], list[Attempt]]


def audio_key(samples: np.ndarray) -> int:
    """A row's sampling-seed key from its audio, so a clip samples the same tokens in any batch, at any position."""
    return zlib.crc32(np.ascontiguousarray(samples, dtype=np.float32).tobytes())


def compression_ratio(text: str) -> float:
    """gzip compression ratio of the text (openai/whisper's loop signal): ~1-2 for speech, high for repeats."""
    raw = text.encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(zlib.compress(raw))


def repeated_ngram(ids: Sequence[int], max_repeats: int, max_ngram: int) -> int:
    """Length n of a token n-gram that ends ``ids`` repeated ``max_repeats`` times in a row, or 0 if none.

    Checked after every decoded token, so it only looks at the tail; the shortest period wins."""
    seq = np.asarray(ids[-max_ngram * max_repeats:], dtype=np.int64)
    for n in range(1, max_ngram + 1):
        span = n * max_repeats
        if len(seq) < span:
            break
        tail = seq[-span:]
        if np.array_equal(tail[n:], tail[:-n]):
            return n
    return 0


def first_repetition(ids: Sequence[int], max_repeats: int, max_ngram: int) -> tuple[int, int] | None:
    """(end, period) of the first prefix ``ids[:end]`` that :func:`repeated_ngram` fires on (shortest period on
    a tie), or None: the point where decoding token by token would have stopped. Vectorised per period."""
    seq = np.asarray(ids, dtype=np.int64)
    best = None
    for n in range(1, max_ngram + 1):
        if len(seq) < n * max_repeats:
            break
        same = seq[n:] == seq[:-n]  # same[j]: token j + n repeats token j
        positions = np.arange(len(same))
        run = positions - np.maximum.accumulate(np.where(same, -1, positions))  # repeats in a row ending at j
        hits = np.flatnonzero(run >= n * (max_repeats - 1))
        if hits.size and (best is None or hits[0] + n + 1 < best[0]):
            best = (int(hits[0] + n + 1), n)
    return best


def cut_repetition(ids: list[int], n: int, max_repeats: int) -> list[int]:
    """``ids`` with a loop of period ``n`` at its end reduced to one occurrence of the repeated unit."""
    return ids[: len(ids) - n * (max_repeats - 1)]


def limit_attempt(attempt: Attempt, budget: int, cap: int, guards: WhisperGuards) -> Attempt:
    """The budget and the repetition rule applied to a hypothesis decoded without them (CTranslate2's generate):
    the same cut greedy_loop makes while decoding. A hypothesis that filled the window's ``cap`` was cut too.
    A cut keeps the average log-probability per token of what was decoded (the caller may recompute it)."""
    ids, stop = list(attempt.ids), attempt.stop
    found = first_repetition(ids[:budget], guards.max_repeats, guards.max_ngram) if guards.enabled else None
    if found:
        end, period = found
        ids, stop = cut_repetition(ids[:end], period, guards.max_repeats), STOP_REPETITION
    if stop == STOP_EOT and len(ids) > budget:
        ids, stop = ids[:budget], STOP_BUDGET
    elif stop == STOP_EOT and len(ids) >= cap:
        stop = STOP_BUDGET
    total = attempt.sum_logprob * (len(ids) + 1) / (len(attempt.ids) + 1)
    return Attempt(ids, total, attempt.no_speech_prob, stop, attempt.extra)


_TEXT_LOOP = re.compile(r"(.)\1{10,}|(.{2,50}?)\2{10,}", re.S)


def text_repetition(text: str) -> bool:
    """DESIGN.md's rule on text: a character, or a substring of 2+ characters, repeated more than 10 times in a row
    (faster-whisper#506: such labels come with high confidence, so confidence filters let them through)."""
    return _TEXT_LOOP.search(text) is not None


def failed_checks(result: Attempt, text: str, guards: WhisperGuards) -> tuple[bool, bool, float]:
    """(needs another temperature, is silence, compression ratio) of one attempt, by openai/whisper's rules."""
    ratio = compression_ratio(text)
    low_logprob = guards.logprob_threshold is not None and result.avg_logprob < guards.logprob_threshold
    silent = (guards.no_speech_threshold is not None and result.no_speech_prob is not None
              and result.no_speech_prob > guards.no_speech_threshold and low_logprob)
    if silent:
        return False, True, ratio
    too_repetitive = guards.compression_ratio_threshold is not None and ratio > guards.compression_ratio_threshold
    return result.stop != STOP_EOT or too_repetitive or low_logprob, False, ratio


def decode_with_fallback(decode: DecodeBatch, budgets: Sequence[int], text_of: Callable[[list[int]], str],
                         guards: WhisperGuards, keys: Sequence[int] | None = None) -> list[GuardedResult]:
    """Run the temperature schedule: every utterance at the first temperature, then only those that failed a check
    at the next one, and so on. An utterance that fails at every temperature keeps its best attempt: one that ended
    by itself if any did, then the highest average log-probability (faster-whisper's choice).

    Row i samples from a generator seeded by (guards.seed, temperature step, keys[i]): give ``keys`` from the audio
    (:func:`audio_key`) and a clip's result does not depend on its batch mates."""
    n = len(budgets)
    keys = list(range(n)) if keys is None else list(keys)
    temperatures = guards.temperatures if guards.enabled else (0.0,)
    tried: list[list[tuple[Attempt, float, bool, float]]] = [[] for _ in range(n)]
    chosen: dict[int, GuardedResult] = {}
    pending = list(range(n))
    for step, temperature in enumerate(temperatures):
        if not pending:
            break
        rngs = [np.random.default_rng([guards.seed, step, keys[i]]) for i in pending]
        attempts = decode(pending, temperature, [budgets[i] for i in pending], rngs)
        still = []
        for i, attempt in zip(pending, attempts):
            retry, silent, ratio = failed_checks(attempt, text_of(attempt.ids), guards)
            tried[i].append((attempt, temperature, silent, ratio))
            if not guards.enabled or not retry:
                chosen[i] = _result(attempt, temperature, len(tried[i]) - 1, ratio, silent and guards.enabled)
            else:
                still.append(i)
        pending = still
    for i in pending:
        attempt, temperature, _, ratio = max(tried[i], key=lambda t: (t[0].stop == STOP_EOT, t[0].avg_logprob))
        chosen[i] = _result(attempt, temperature, len(tried[i]) - 1, ratio, False)
    return [chosen[i] for i in range(n)]


def _result(attempt: Attempt, temperature: float, fallbacks: int, ratio: float, silent: bool) -> GuardedResult:
    if silent:
        attempt = Attempt([], attempt.sum_logprob, attempt.no_speech_prob, attempt.stop, attempt.extra)
    return GuardedResult(attempt, temperature, fallbacks, ratio, silent,
                         None if attempt.stop == STOP_EOT else attempt.stop)


def sample_tokens(logits: np.ndarray, temperature: float, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Next token per row from suppressed logits [B, V]: argmax at 0, else a draw from softmax(logits / T) with
    each row's own generator."""
    if temperature <= 0.0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    u = np.array([[rng.random()] for rng in rngs])
    return np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def logsumexp_rows(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row of [B, V] logits (-inf entries allowed), in the logits' own precision:
    it runs at every decoded token, and float32 is ample for log-probabilities compared with -1."""
    m = logits.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]


def greedy_loop(step: Callable[[np.ndarray], np.ndarray], prompts: np.ndarray, budgets: Sequence[int], *, eot: int,
                suppress: np.ndarray, begin_suppress: np.ndarray, temperature: float,
                rngs: Sequence[np.random.Generator],
                guards: WhisperGuards, no_speech_id: int | None = None, keep_logits: bool = False) -> list[Attempt]:
    """Token-by-token decoding of a batch with the guards' stopping rules, over any model.

    ``step(tokens [B, T]) -> logits [B, T, V]`` runs the decoder on the new tokens and keeps its own cache: first
    the whole prompt, then one token per row. Finished rows keep feeding end-of-text, as transformers pads them.
    ``keep_logits`` stores each row's suppressed step logits in ``Attempt.extra["logits"]`` (labelling scores)."""
    batch = len(prompts)
    logits = step(np.asarray(prompts, dtype=np.int64))
    no_speech = None
    if no_speech_id is not None:
        first = logits[:, 0, :].astype(np.float32)
        no_speech = np.exp(first[:, no_speech_id] - logsumexp_rows(first))
    ids: list[list[int]] = [[] for _ in range(batch)]
    logp = np.zeros(batch)
    stops = [STOP_BUDGET] * batch
    kept: list[list[np.ndarray]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    for t in range(max(budgets) + 1):
        last = logits[:, -1, :].astype(np.float32, copy=True)
        if suppress.size:
            last[:, suppress] = -np.inf
        if t == 0 and begin_suppress.size:
            last[:, begin_suppress] = -np.inf
        nxt = sample_tokens(last, temperature, rngs)
        lp = last[np.arange(batch), nxt] - logsumexp_rows(last)
        for b in np.flatnonzero(~done):
            if keep_logits:
                kept[b].append(last[b])
            if nxt[b] == eot:
                logp[b] += lp[b]
                stops[b], done[b] = STOP_EOT, True
            elif len(ids[b]) >= budgets[b]:
                done[b] = True  # stop stays STOP_BUDGET: the budget ran out before an end-of-text
            else:
                ids[b].append(int(nxt[b]))
                logp[b] += lp[b]
                if guards.enabled:
                    period = repeated_ngram(ids[b], guards.max_repeats, guards.max_ngram)
                    if period:
                        ids[b] = cut_repetition(ids[b], period, guards.max_repeats)
                        stops[b], done[b] = STOP_REPETITION, True
        if done.all():
            break
        logits = step(np.where(done, eot, nxt)[:, None].astype(np.int64))
    return [Attempt(ids[b], float(logp[b]), None if no_speech is None else float(no_speech[b]), stops[b],
                    {"logits": kept[b]} if keep_logits else {}) for b in range(batch)]
