"""Whisper hallucination guards (speechkd_runtime.guards): checks, the token loop's stopping rules, the fallback."""

from __future__ import annotations

import numpy as np
import pytest

from speechkd.config import ConfigError, from_dict
from speechkd_runtime.guards import (
    RAW_GREEDY,
    STOP_BUDGET,
    STOP_EOT,
    STOP_REPETITION,
    Attempt,
    WhisperGuards,
    compression_ratio,
    cut_repetition,
    decode_with_fallback,
    first_repetition,
    greedy_loop,
    limit_attempt,
    repeated_ngram,
    sample_tokens,
    text_repetition,
)

EOT, VOCAB = 9, 12


def scripted_step(scripts: list[list[int]], confidence: float = 8.0):
    """A fake decoder whose row b emits scripts[b] (then end-of-text): logits peak at the scripted token."""
    pos = {"t": 0}

    def step(tokens: np.ndarray) -> np.ndarray:
        batch, width = tokens.shape
        t = pos["t"]
        pos["t"] += 1
        logits = np.zeros((batch, width, VOCAB), dtype=np.float32)
        for b, script in enumerate(scripts):
            want = script[t] if t < len(script) else EOT
            logits[b, -1, want] = confidence
        return logits

    return step


def loop(scripts, budgets, guards=WhisperGuards(), temperature=0.0, confidence=8.0):
    rngs = [np.random.default_rng(b) for b in range(len(scripts))]
    return greedy_loop(scripted_step(scripts, confidence), np.zeros((len(scripts), 3), dtype=np.int64), budgets,
                       eot=EOT, suppress=np.array([], dtype=np.int64), begin_suppress=np.array([], dtype=np.int64),
                       temperature=temperature, rngs=rngs, guards=guards)


def test_compression_ratio_is_high_for_repeated_text_only():
    assert compression_ratio("") == 0.0
    assert compression_ratio("the quick brown fox jumps over the lazy dog") < 1.5
    assert compression_ratio("i am crying " * 20) > 2.4


def test_text_rule_of_design_md():
    assert text_repetition("a" * 11) and text_repetition("ab" * 11) and text_repetition("i am crying " * 11)
    assert not text_repetition("a" * 10) and not text_repetition("zero zero zero four three two")


def test_repeated_ngram_finds_the_shortest_period_at_the_end():
    assert repeated_ngram([1, 2, 3] * 10, max_repeats=10, max_ngram=4) == 3
    assert repeated_ngram([5] * 10, max_repeats=10, max_ngram=4) == 1
    assert repeated_ngram([1, 2, 3] * 9, max_repeats=10, max_ngram=4) == 0
    assert repeated_ngram([1, 2, 3] * 10 + [4], max_repeats=10, max_ngram=4) == 0
    ids = [7, 8] + [1, 2, 3] * 10
    assert cut_repetition(ids, 3, 10) == [7, 8, 1, 2, 3]


def test_loop_stops_at_eot_at_the_budget_and_on_a_repetition():
    looping = [1, 2, 3] * 30
    got = loop([[4, 5, 6], list(range(1, 9)), looping], budgets=[20, 5, 100])
    assert [a.stop for a in got] == [STOP_EOT, STOP_BUDGET, STOP_REPETITION]
    assert got[0].ids == [4, 5, 6] and got[1].ids == [1, 2, 3, 4, 5]
    assert got[2].ids == [1, 2, 3]  # the loop is cut to one occurrence of its unit
    assert all(a.sum_logprob < 0 for a in got)
    # Raw greedy has no repetition rule: the same loop runs into the budget instead.
    raw = loop([looping], budgets=[40], guards=RAW_GREEDY)[0]
    assert raw.stop == STOP_BUDGET and len(raw.ids) == 40


def test_a_hypothesis_of_exactly_the_budget_that_then_ends_is_not_cut():
    assert loop([[1, 2, 3]], budgets=[3])[0].stop == STOP_EOT


def test_budget_scales_with_duration_and_raw_greedy_uses_the_cap():
    g = WhisperGuards()
    assert g.budget(0.0, 224) == g.min_tokens
    assert g.budget(3.0, 224) == g.min_tokens + 24
    assert g.budget(60.0, 224) == 224
    assert RAW_GREEDY.budget(3.0, 224) == 224


def test_sampling_is_deterministic_per_row_generator():
    logits = np.zeros((2, 50), dtype=np.float32)
    a = sample_tokens(logits, 1.0, [np.random.default_rng(1), np.random.default_rng(2)])
    b = sample_tokens(logits, 1.0, [np.random.default_rng(1), np.random.default_rng(2)])
    assert (a == b).all()
    assert (sample_tokens(logits + np.eye(50)[[3, 7]] * 100, 0.0, []) == [3, 7]).all()


def fake_decoder(by_temperature: dict[float, list[Attempt]], calls: list):
    def decode(rows, temperature, budgets, rngs):
        calls.append((tuple(rows), temperature))
        return [by_temperature[temperature][i] for i in rows]
    return decode


def test_fallback_retries_only_failing_rows_and_records_what_acted():
    good, loop_ids = Attempt([1, 2, 3], -0.3), Attempt([1, 2] * 40, -2.0, stop=STOP_REPETITION)
    by_t = {0.0: [good, loop_ids, Attempt([4], -9.0)],
            0.2: [None, Attempt([5, 6], -0.5), Attempt([4], -9.0)]}
    by_t.update({t: [None, None, Attempt([4], -9.0)] for t in (0.4, 0.6, 0.8, 1.0)})
    calls = []
    out = decode_with_fallback(fake_decoder(by_t, calls), [50, 50, 50], lambda ids: " ".join(map(str, ids)),
                               WhisperGuards())
    assert calls[0] == ((0, 1, 2), 0.0) and calls[1] == ((1, 2), 0.2) and calls[2] == ((2,), 0.4)
    assert (out[0].temperature, out[0].fallbacks, out[0].cut) == (0.0, 0, None)
    assert (out[1].temperature, out[1].fallbacks, out[1].ids) == (0.2, 1, [5, 6])
    assert out[2].fallbacks == 5 and out[2].record()["fallbacks"] == 5  # failed everywhere: the best attempt kept


def test_a_row_that_only_ever_loops_keeps_its_cut_hypothesis_flagged():
    cut = Attempt([1, 2], -0.2, stop=STOP_REPETITION)
    out = decode_with_fallback(lambda rows, t, b, r: [cut for _ in rows], [50], lambda ids: "x", WhisperGuards())
    assert out[0].cut == STOP_REPETITION and out[0].fallbacks == 5


def test_silence_is_emptied_and_flagged_not_retried():
    calls = []
    silent = Attempt([1, 2, 3], -6.0, no_speech_prob=0.9)
    out = decode_with_fallback(fake_decoder({0.0: [silent]}, calls), [20], lambda ids: "you", WhisperGuards())
    assert len(calls) == 1 and out[0].no_speech and out[0].ids == []


def test_raw_greedy_decodes_once_and_keeps_what_it_got():
    calls = []
    bad = Attempt([1] * 30, -5.0, no_speech_prob=0.9, stop=STOP_BUDGET)
    out = decode_with_fallback(fake_decoder({0.0: [bad]}, calls), [30], lambda ids: "a" * 30, RAW_GREEDY)
    assert len(calls) == 1 and out[0].ids == [1] * 30 and not out[0].no_speech


def test_limit_attempt_applies_budget_and_repetition_after_the_fact():
    g = WhisperGuards()
    assert limit_attempt(Attempt(list(range(30)), -1.0), 20, 224, g).stop == STOP_BUDGET
    looped = limit_attempt(Attempt([7] + [1, 2] * 40, -1.0), 200, 224, g)
    assert looped.stop == STOP_REPETITION and looped.ids == [7, 1, 2]
    assert limit_attempt(Attempt([1, 2, 3], -1.0), 20, 224, g).stop == STOP_EOT
    assert limit_attempt(Attempt([1] * 224, -1.0), 224, 224, RAW_GREEDY).stop == STOP_BUDGET


@pytest.mark.parametrize("bad, field", [
    ({"temperatures": []}, "temperatures"),
    ({"temperatures": [0.4, 0.2]}, "temperatures"),
    ({"temperatures": [-0.1]}, "temperatures"),
    ({"compression_ratio_threshold": 0.5}, "compression_ratio_threshold"),
    ({"logprob_threshold": 0.3}, "logprob_threshold"),
    ({"no_speech_threshold": 1.5}, "no_speech_threshold"),
    ({"tokens_per_second": 0}, "tokens_per_second"),
    ({"max_repeats": 1}, "max_repeats"),
])
def test_out_of_range_thresholds_are_refused_with_the_field_name(bad, field):
    with pytest.raises(ConfigError, match=f"guards.{field}"):
        from_dict(WhisperGuards, bad, where="eval.yaml")
    assert from_dict(WhisperGuards, {"logprob_threshold": None}).logprob_threshold is None


def test_first_repetition_finds_where_token_by_token_decoding_would_stop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        unit = list(rng.integers(0, 4, size=int(rng.integers(1, 5))))
        ids = list(rng.integers(0, 4, size=int(rng.integers(0, 8)))) + unit * int(rng.integers(1, 14)) + [7, 8]
        expected = next(((end, repeated_ngram(ids[:end], 10, 6)) for end in range(1, len(ids) + 1)
                         if repeated_ngram(ids[:end], 10, 6)), None)
        assert first_repetition(ids, 10, 6) == expected, ids
