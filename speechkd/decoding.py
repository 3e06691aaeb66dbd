"""Scored Whisper decoding of 30-s windows, with the same outputs from both backends.

Labelling needs more than text: per-token log-probabilities and the entropy of each step's full
next-token distribution (confidence filters), the no-speech probability, sampled alternative
hypotheses (agreement filters), and token start times to split a packed window back into its
utterances. Each window's audio is encoded once and reused for all of these.

- ctranslate2: `encode`, then `generate` (greedy, `return_logits_vocab` gives each step's
  distribution), sampling from the same encoder output, and `align` (cross-attention DTW).
- transformers: `generate()` cannot reuse encoder outputs for sampling nor return the no-speech
  probability, so this module runs a short greedy/sampling loop over the model's own forward with
  its KV cache, and aligns tokens with the alignment heads' cross-attention and DTW, as Whisper does.
Both apply the same suppression rules (the model's suppress lists, timestamps and special tokens off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from speechkd.teachers.whisper_tokens import EOT_TOKEN, NO_TIMESTAMPS_TOKEN, WHISPER_MAX_TARGET_TOKENS
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.guards import (
    NO_SPEECH_TOKENS,
    RAW_GREEDY,
    STOP_EOT,
    Attempt,
    GuardedResult,
    WhisperGuards,
    audio_key,
    decode_with_fallback,
    greedy_loop,
    limit_attempt,
)

FRAME_SECONDS = 0.02  # one encoder frame (two 10 ms mel hops)
SAMPLES_PER_FRAME = int(SAMPLE_RATE_HZ * FRAME_SECONDS)
MEDIAN_FILTER_WIDTH = 7  # smoothing of cross-attention before DTW, as in openai/whisper's timing.py


@dataclass
class Hypothesis:
    """Text tokens of one decoded sequence (no special tokens) with their per-step statistics."""

    ids: list[int]
    logprobs: list[float] = field(default_factory=list)  # log p of each chosen text token
    entropies: list[float] = field(default_factory=list)  # entropy (nats) of each step, text tokens then end-of-text
    eot_logprob: float = 0.0
    token_starts: list[float] | None = None  # seconds from the window start, when alignment was asked for


@dataclass
class WindowResult:
    best: Hypothesis
    samples: list[Hypothesis]
    no_speech_prob: float
    language: str | None
    guard: GuardedResult | None = None  # what the hallucination guards did to get `best`


def step_stats(logits: np.ndarray, chosen: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability of the chosen token and entropy per step, from raw (suppressed = -inf) logits."""
    x = np.asarray(logits, dtype=np.float64)
    x = np.where(x < -1e30, -np.inf, x)  # CT2 marks suppressed tokens with -FLT_MAX
    m = x.max(axis=-1, keepdims=True)
    logz = m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    logp = x - logz
    p = np.exp(logp)
    ent = -(p * np.where(p > 0, logp, 0.0)).sum(axis=-1)
    chosen_lp = logp[np.arange(len(chosen)), np.asarray(chosen)]
    return chosen_lp, ent


def dtw_token_starts(attn: np.ndarray, num_frames: int) -> list[float]:
    """Start time (s) of each token from alignment-head cross-attention [heads, tokens, frames]."""
    from scipy.ndimage import median_filter

    w = attn[:, :, :num_frames].astype(np.float64)
    w = (w - w.mean(axis=-1, keepdims=True)) / (w.std(axis=-1, keepdims=True) + 1e-8)
    w = median_filter(w, size=(1, 1, MEDIAN_FILTER_WIDTH))
    cost = -w.mean(axis=0)  # tokens x frames
    return [j * FRAME_SECONDS for j in _dtw_starts(cost)]


def _dtw_starts(cost: np.ndarray) -> list[int]:
    """First frame of each row on the minimum-cost monotonic path (DTW), vectorised by anti-diagonals.

    Cell (i, j) depends on (i-1, j-1), (i-1, j), (i, j-1), all on the two previous anti-diagonals, so
    each diagonal is one numpy step: ~n+m steps instead of n*m Python iterations.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        choices = np.stack([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        k = np.argmin(choices, axis=0)
        acc[i, j] = cost[i - 1, j - 1] + choices[k, np.arange(len(i))]
        trace[i, j] = k
    i, j, starts = n, m, [m] * n
    while i > 0 and j > 0:
        starts[i - 1] = min(starts[i - 1], j - 1)
        k = trace[i, j]
        if k == 0:
            i, j = i - 1, j - 1
        elif k == 1:
            i -= 1
        else:
            j -= 1
    return starts


class ScoredDecoder:
    """Decode batches of windows (<= 30 s of 16 kHz audio each) with scores; one instance per job."""

    def __init__(
        self,
        teacher,
        backend: Literal["transformers", "ctranslate2"],
        *,
        language: str | None = "en",
        task: str = "transcribe",
        num_samples: int = 0,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int | None = None,
        guards: WhisperGuards = WhisperGuards(),
    ):
        self.teacher = teacher
        self.guards = guards
        self.backend = backend
        self.language = teacher.language_code(language) if teacher.is_multilingual else None
        self.task = teacher.check_task(task)
        self.num_samples = num_samples
        self.temperature = temperature
        self.seed = seed
        tok = teacher.tokenizer
        self.eot = tok.convert_tokens_to_ids(EOT_TOKEN)
        self.timestamp_begin = tok.convert_tokens_to_ids(NO_TIMESTAMPS_TOKEN) + 1
        vocab = tok.get_vocab()
        self.no_speech_id = next((vocab[t] for t in NO_SPEECH_TOKENS if t in vocab), None)
        gen = teacher.model_generation_config
        self.suppress = sorted(set(gen.suppress_tokens or []))
        self.begin_suppress = sorted(set(gen.begin_suppress_tokens or []))
        limit = int(gen.max_length or WHISPER_MAX_TARGET_TOKENS)
        self.max_new_tokens = min(max_new_tokens or limit, limit // 2)  # Whisper's own cap: half the context
        self._prompt_cache: dict[str | None, list[int]] = {}
        self.word_start = None  # lazily: which token ids begin a word (leading space)

    # ------------------------------------------------------------------------------------ public

    def decode(self, windows: Sequence[np.ndarray], align: Sequence[bool], batch_index: int = 0) -> list[WindowResult]:
        """The guarded best hypothesis of each window (see speechkd_runtime.guards), its scores, samples and,
        where ``align`` says so, token start times. A window's token budget follows its audio's duration."""
        features = self.teacher.features(list(windows))
        frames = [min(1500, -(-len(w) // SAMPLES_PER_FRAME)) for w in windows]
        budgets = [self.guards.budget(len(w) / SAMPLE_RATE_HZ, self.max_new_tokens) for w in windows]
        keys = [audio_key(w) for w in windows]
        if self.backend == "ctranslate2":
            return self._decode_ct2(features, frames, align, batch_index, budgets, keys)
        return self._decode_hf(features, frames, align, batch_index, budgets, keys)

    def _guarded_results(self, decode, budgets, keys, languages) -> list[WindowResult]:
        guarded = decode_with_fallback(decode, budgets, self._text, self.guards, keys)
        return [WindowResult(self._scored(g.attempt), [], g.attempt.no_speech_prob or 0.0, lang, g)
                for g, lang in zip(guarded, languages)]

    def _scored(self, attempt: Attempt) -> Hypothesis:
        """Per-token log-probabilities and entropies of an attempt, from the step logits it kept (computed once:
        the ctranslate2 path needs them for the guard decision as well as for the record)."""
        if "scored" in attempt.extra:
            return attempt.extra["scored"]
        logits = attempt.extra["logits"]
        ended = attempt.stop == STOP_EOT and len(logits) > len(attempt.ids)
        chosen = attempt.ids + [self.eot] if ended else attempt.ids
        if not chosen:
            return Hypothesis([])
        lp, ent = step_stats(np.stack(logits[: len(chosen)]), chosen)
        attempt.extra["scored"] = Hypothesis(list(attempt.ids), lp[: len(attempt.ids)].tolist(), ent.tolist(),
                                             float(lp[len(attempt.ids)]) if ended else 0.0)
        return attempt.extra["scored"]

    def _text(self, ids: list[int]) -> str:
        return self.teacher.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def is_word_start(self, token_id: int) -> bool:
        if self.word_start is None:
            tok = self.teacher.tokenizer
            pieces = tok.convert_ids_to_tokens(list(range(self.eot)))
            self.word_start = np.array([p.startswith("Ġ") or p.startswith(" ") for p in pieces])
        return bool(token_id < len(self.word_start) and self.word_start[token_id])

    # ------------------------------------------------------------------------------ ctranslate2

    def _prompts(self, languages: Sequence[str | None]) -> list[list[int]]:
        for lang in set(languages) - set(self._prompt_cache):
            self._prompt_cache[lang] = self.teacher.prompt_ids(lang, self.task)
        return [self._prompt_cache[lang] for lang in languages]

    def _decode_ct2(self, features, frames, align, batch_index, budgets, keys) -> list[WindowResult]:
        import ctranslate2

        model = self.teacher.ct2_model
        encoded = model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        if self.teacher.is_multilingual and self.language is None:
            languages = [pairs[0][0][2:-2] for pairs in model.detect_language(encoded)]
        else:
            languages = [self.language] * len(features)
        prompts = self._prompts(languages)
        enc = np.asarray(encoded)
        common = dict(suppress_blank=True, suppress_tokens=self.suppress)

        def generate(rows, row_budgets, limit, **sampling) -> list[Attempt]:
            # ctranslate2's Whisper generate decodes at most half of max_length (its context size).
            view = encoded if len(rows) == len(features) else ctranslate2.StorageView.from_array(
                np.ascontiguousarray(enc[rows]))
            out = model.generate(view, [prompts[i] for i in rows], beam_size=1, return_logits_vocab=True,
                                 return_no_speech_prob=True, max_length=2 * limit, **common, **sampling)
            attempts = []
            for r, budget in zip(out, row_budgets):
                logits = [np.asarray(x) for x in r.logits[0]]
                attempt = limit_attempt(Attempt(self._text_ids(r.sequences_ids[0]), 0.0, float(r.no_speech_prob),
                                                extra={"logits": logits}), budget, self.max_new_tokens, self.guards)
                scored = self._scored(attempt)  # exact, over what the cut kept
                attempt.sum_logprob = float(np.sum(scored.logprobs)) + scored.eot_logprob
                attempts.append(attempt)
            return attempts

        sampler: dict = {}

        def decode(rows, temperature, row_budgets, rngs) -> list[Attempt]:
            # Batch-independent, as WhisperTeacher's ctranslate2 decoder: the batched greedy pass runs to the
            # window's limit and cuts each row to its own budget. Sampled fallbacks run on the transformers
            # weights: ctranslate2's seed reaches only worker threads it has not started yet, so its sampling
            # cannot be reproduced, and a resumed labelling run must equal an uninterrupted one.
            if temperature == 0:
                return generate(rows, row_budgets, self.max_new_tokens, sampling_topk=1)
            if not sampler:  # the rows of the first fallback include every later one: encode them once
                sampler.update(rows=list(rows), run=self._hf_runner(features[rows], [languages[i] for i in rows])[2])
            return sampler["run"]([sampler["rows"].index(r) for r in rows], temperature, row_budgets, rngs,
                                  self.guards, True)

        results = self._guarded_results(decode, budgets, keys, languages)
        if self.num_samples:
            ctranslate2.set_random_seed(self.seed + batch_index)
            sampled = model.generate(encoded, prompts, beam_size=1, sampling_topk=0, sampling_temperature=self.temperature,
                                     num_hypotheses=self.num_samples, return_scores=False,
                                     max_length=2 * self.max_new_tokens, **common)
            for res, r in zip(results, sampled):
                res.samples = [Hypothesis(self._text_ids(seq)) for seq in r.sequences_ids]
        if any(align):
            self._align_ct2(model, encoded, prompts, frames, align, results)
        return results

    def _align_ct2(self, model, encoded, prompts, frames, align, results) -> None:
        import ctranslate2

        enc = np.asarray(encoded)
        rows, tokens, nframes, targets = [], [], [], []
        for i, res in enumerate(results):
            if not align[i]:
                continue
            for hyp in [res.best, *res.samples]:
                if hyp.ids:
                    rows.append(i)
                    tokens.append(hyp.ids)
                    nframes.append(2 * frames[i])  # align counts 10 ms mel frames, returns 20 ms encoder frames
                    targets.append(hyp)
                else:
                    hyp.token_starts = []
        if not rows:
            return
        sub = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc[rows]))
        # All prompts in one batch share a length; align takes one start sequence, so align per language.
        for lang_prompt in {tuple(prompts[i]) for i in rows}:
            idx = [k for k, i in enumerate(rows) if tuple(prompts[i]) == lang_prompt]
            view = sub if len(idx) == len(rows) else ctranslate2.StorageView.from_array(np.ascontiguousarray(enc[[rows[k] for k in idx]]))
            out = model.align(view, list(lang_prompt), [tokens[k] for k in idx], [nframes[k] for k in idx],
                              median_filter_width=MEDIAN_FILTER_WIDTH)
            for k, a in zip(idx, out):
                starts = [None] * len(tokens[k])
                for ti, fi in a.alignments:
                    if ti < len(starts) and starts[ti] is None:
                        starts[ti] = fi * FRAME_SECONDS
                last = 0.0
                for t in range(len(starts)):  # DTW paths cover every token; guard anyway
                    last = starts[t] = starts[t] if starts[t] is not None else last
                targets[k].token_starts = starts

    def _text_ids(self, seq: Sequence[int]) -> list[int]:
        out = []
        for t in seq:
            if t == self.eot:
                break
            if t < self.eot:
                out.append(int(t))
        return out

    # ----------------------------------------------------------------------------- transformers

    def _hf_runner(self, features: np.ndarray, languages: Sequence[str | None] | None = None):
        """(encoder output, languages, run): ``run(rows, temperature, budgets, rngs, guards, keep_logits)``
        decodes rows of ``features`` token by token with the transformers model (greedy_loop)."""
        from speechkd.teachers.whisper import hf_decoder_step

        teacher = self.teacher
        model = teacher.model
        device, dtype = teacher.device, teacher.dtype
        inputs = torch.from_numpy(features).to(device=device, dtype=dtype)
        with torch.inference_mode():
            enc = model.model.encoder(inputs).last_hidden_state
            if languages is None:
                if teacher.is_multilingual and self.language is None:
                    languages = teacher.detect_language_hf(inputs)
                else:
                    languages = [self.language] * len(features)
        prompts = np.array(self._prompts(languages), dtype=np.int64)
        # Special tokens and timestamps never belong in a no-timestamps transcript.
        suppress = np.array(sorted(set(self.suppress) | set(range(self.eot + 1, model.config.vocab_size))),
                            dtype=np.int64)
        begin = np.array(self.begin_suppress, dtype=np.int64)

        def run(rows, temperature, row_budgets, rngs, guards, keep_logits) -> list[Attempt]:
            with torch.inference_mode():
                return greedy_loop(hf_decoder_step(model, enc[rows]), prompts[rows], row_budgets, eot=self.eot,
                                   suppress=suppress, begin_suppress=begin, temperature=temperature, rngs=rngs,
                                   guards=guards, no_speech_id=self.no_speech_id, keep_logits=keep_logits)

        return enc, list(languages), run

    def _decode_hf(self, features, frames, align, batch_index, budgets, keys) -> list[WindowResult]:
        enc, languages, run = self._hf_runner(features)

        def decode(rows, temperature, row_budgets, rngs) -> list[Attempt]:
            return run(rows, temperature, row_budgets, rngs, self.guards, True)

        results = self._guarded_results(decode, budgets, keys, languages)
        if self.num_samples:
            k = self.num_samples
            rows = [i for i in range(len(features)) for _ in range(k)]
            rngs = [np.random.default_rng([self.seed, batch_index, i, j]) for i in range(len(features)) for j in range(k)]
            samples = run(rows, self.temperature, [self.max_new_tokens] * len(rows), rngs, RAW_GREEDY, False)
            for i, res in enumerate(results):
                res.samples = [Hypothesis(a.ids) for a in samples[i * k : (i + 1) * k]]
        if any(align):
            with torch.inference_mode():
                self._align_hf(self.teacher.model, enc, self._prompts(languages), frames, align, results)
        return results

    def _align_hf(self, model, enc, prompts, frames, align, results) -> None:
        """Token start times from the alignment heads' cross-attention (teacher-forced pass + DTW)."""
        from transformers.modeling_outputs import BaseModelOutput

        heads = self.teacher.model_generation_config.alignment_heads
        if not heads:
            raise ValueError(f"teacher {self.teacher.name} has no alignment_heads in its generation config; "
                             "packing needs them to split windows (set pack: false)")
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")  # sdpa does not return attention weights
        try:
            for i, res in enumerate(results):
                if not align[i]:
                    continue
                for hyp in [res.best, *res.samples]:
                    if not hyp.ids:
                        hyp.token_starts = []
                        continue
                    seq = torch.tensor([prompts[i] + hyp.ids + [self.eot]], device=enc.device)
                    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=enc[i : i + 1]),
                                decoder_input_ids=seq, output_attentions=True)
                    attn = torch.stack([out.cross_attentions[layer][0, head] for layer, head in heads])
                    n_prompt = len(prompts[i])
                    attn = attn[:, n_prompt : n_prompt + len(hyp.ids)].float().cpu().numpy()
                    hyp.token_starts = dtw_token_starts(attn, frames[i])
        finally:
            model.set_attn_implementation(previous)
