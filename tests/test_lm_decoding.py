"""Word n-gram LMs for CTC decoding: ARPA export that is exact, an ARPA reader, prefix beam search with the LM."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from speechkd.lm import BOS, DecodingLMConfig, KneserNeyLM, LMError, build_decoding_lm, read_training_text
from speechkd.vocab import normalize_label
from speechkd_runtime.beam import BeamSearchOptions, CtcBeamSearch
from speechkd_runtime.ctc import greedy_ids, ids_to_text
from speechkd_runtime.ngram import LN10, ArpaError, NgramLM

TOKENS = ["<blk>", "▁", *"abcdefghijklmnopqrstuvwxyz'"]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_arpa_file_gives_exactly_the_kneser_ney_probabilities(order, tmp_path):
    sents = [normalize_label(s) for s in read_training_text()[:400]]
    lm = KneserNeyLM(sents, order=order, normalised=True)
    arpa = NgramLM(lm.write_arpa(tmp_path / "lm.arpa"))
    assert arpa.order == order and arpa.words == lm.vocab - {"</s>"}
    rnd = random.Random(order)
    vocab = sorted(arpa.words) + ["neverseenword"]
    worst = 0.0
    for trial in range(200):
        words = rnd.choice(sents).split()[:6] if trial % 2 else [rnd.choice(vocab) for _ in range(rnd.randint(1, 6))]
        state, history = arpa.start(), [BOS] * (order - 1)
        for w in [*words, "</s>"]:
            got, state = arpa.score(state, w)
            worst = max(worst, abs(got - math.log(lm.prob(w, history))))
            history.append(w)
    assert worst < 1e-5  # ARPA stores 7 decimals of log10


HAND_ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.5
-0.5\tthe\t-0.3
-0.7\tcat
-1.2\t</s>
-2.0\t<unk>

\\2-grams:
-0.2\t<s> the
-0.1\tthe cat

\\end\\
"""


def test_ngram_reader_backs_off_like_srilm_and_kenlm(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(HAND_ARPA)
    lm = NgramLM(path)
    assert lm.order == 2 and lm.words == {"the", "cat"} and "ca" in lm.prefixes
    cases = [((BOS,), "the", -0.2), ((BOS,), "cat", -0.5 - 0.7), (("the",), "cat", -0.1),
             (("cat",), "the", -0.5), ((BOS,), "dog", -0.5 - 2.0), (("the",), "</s>", -0.3 - 1.2),
             (("cat",), "</s>", -1.2)]
    for history, word, log10 in cases:
        got, state = lm.score(history, word)
        assert got == pytest.approx(log10 * LN10), (history, word)
    assert lm.score((BOS,), "dog")[1] == ("<unk>",)


def test_bad_arpa_files_are_refused_with_the_line(tmp_path):
    with pytest.raises(ArpaError, match="does not exist.*speechkd lm"):
        NgramLM(tmp_path / "missing.arpa")
    (tmp_path / "text.arpa").write_text("just some words\n")
    with pytest.raises(ArpaError, match="not an ARPA file"):
        NgramLM(tmp_path / "text.arpa")
    (tmp_path / "bad.arpa").write_text(HAND_ARPA.replace("-0.1\tthe cat", "-0.1\tthe cat sat dog"))
    with pytest.raises(ArpaError, match=r"bad\.arpa:14: a 2-gram line"):
        NgramLM(tmp_path / "bad.arpa")


def frames(spec: list[dict[str, float]]) -> np.ndarray:
    """[T, V] log-probs: each frame's listed tokens get their probability, the blank the rest."""
    out = np.full((len(spec), len(TOKENS)), 1e-6)
    for t, probs in enumerate(spec):
        for tok, p in probs.items():
            out[t, TOKENS.index(tok)] = p
        out[t, 0] = max(1.0 - sum(probs.values()), 1e-6)
    return np.log(out / out.sum(1, keepdims=True))


def spell(text: str, p: float = 0.9) -> list[dict[str, float]]:
    """Frames that say `text` (with a blank frame after each symbol, so doubled letters survive)."""
    out: list[dict[str, float]] = []
    for ch in text.replace(" ", "▁"):
        out += [{ch: p}, {}]
    return out


def test_prefix_beam_search_sums_alignments_that_greedy_misses():
    lp = frames([{"a": 0.4}, {"a": 0.4}])  # best path: blank blank; but P("a") = 0.64 > P("") = 0.36
    assert ids_to_text(greedy_ids(lp, 0), TOKENS) == ""
    assert CtcBeamSearch(TOKENS, 0).decode(lp) == "a"


def test_without_an_lm_a_peaky_output_decodes_like_greedy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, len(TOKENS), size=40)
        lp = np.full((40, len(TOKENS)), -12.0)
        lp[np.arange(40), ids] = -1e-4
        beam = CtcBeamSearch(TOKENS, 0, options=BeamSearchOptions(beam_size=4))
        assert beam.decode(lp) == ids_to_text(greedy_ids(lp, 0), TOKENS)


def test_the_lm_picks_the_known_word_among_acoustic_near_ties(tmp_path):
    lm = KneserNeyLM(["the cat sat", "the hat", "a cat sat on the mat"], order=3, normalised=True)
    ngram = NgramLM(lm.write_arpa(tmp_path / "lm.arpa"))
    spec = spell("th") + [{"a": 0.5, "e": 0.45}, {}] + spell(" cat sat")  # acoustically "tha", barely
    lp = frames(spec)
    assert ids_to_text(greedy_ids(lp, 0), TOKENS) == "tha cat sat"
    assert CtcBeamSearch(TOKENS, 0).decode(lp) == "tha cat sat"
    assert CtcBeamSearch(TOKENS, 0, ngram).decode(lp) == "the cat sat"
    # A word the LM has never seen still comes out when the acoustics are sure of it.
    assert CtcBeamSearch(TOKENS, 0, ngram).decode(frames(spell("the zebra sat", 0.999))) == "the zebra sat"


def test_subword_tokens_mark_word_starts_with_the_space_symbol(tmp_path):
    tokens = ["<blk>", "▁the", "▁ca", "t", "▁ha"]
    lm = NgramLM(KneserNeyLM(["the cat"] * 3 + ["the hat"], order=2, normalised=True).write_arpa(tmp_path / "lm.arpa"))
    lp = np.log(np.array([[0.05, 0.9, 0.03, 0.01, 0.01], [0.9, 0.04, 0.02, 0.02, 0.02],
                          [0.1, 0.01, 0.44, 0.0, 0.45], [0.1, 0.0, 0.0, 0.9, 0.0]]) + 1e-9)
    assert ids_to_text(greedy_ids(lp, 0), tokens) == "the hat"
    assert CtcBeamSearch(tokens, 0, lm).decode(lp) == "the cat"  # the LM knows "the cat" better


def test_beam_options_are_checked():
    with pytest.raises(ValueError, match="beam_size"):
        CtcBeamSearch(TOKENS, 0, options=BeamSearchOptions(beam_size=0))
    with pytest.raises(ValueError, match=r"shape \(3, 5\)"):
        CtcBeamSearch(TOKENS, 0).decode(np.zeros((3, 5)))


def test_build_decoding_lm_from_pseudo_labels(tmp_path):
    labels = tmp_path / "kept.jsonl"
    rows = [{"id": f"u{i}", "text": t} for i, t in enumerate(["Hello, World!", "hello there world", "Bye now."])]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "t", "audio": "x.wav", "text": "BYE NOW"}) + "\n")
    summary = build_decoding_lm(DecodingLMConfig(text=str(labels), order=2, exclude=(str(test),)), tmp_path / "lm.arpa")
    assert summary["sentences"] == 2 and summary["excluded"] == 1 and summary["vocabulary"] == 3
    lm = NgramLM(tmp_path / "lm.arpa")
    assert lm.words == {"hello", "world", "there"}  # normalised like CTC labels; the test sentence left out
    assert (tmp_path / "lm.yaml").is_file()
    (tmp_path / "nolabels.jsonl").write_text(json.dumps({"id": "a", "audio": "a.wav"}) + "\n")
    with pytest.raises(LMError, match="no `text` field"):
        build_decoding_lm(DecodingLMConfig(text=str(tmp_path / "nolabels.jsonl")), tmp_path / "x.arpa")
    with pytest.raises(LMError, match="text is required"):
        build_decoding_lm(DecodingLMConfig(), tmp_path / "x.arpa")


def test_sweep_tries_each_setting_on_one_set_of_log_probs(synth_corpus, tmp_path):
    from test_export import make_student

    from speechkd.data import decode, read_manifest
    from speechkd.evaluate import sweep_ctc_decoding
    from speechkd.metrics import score
    from speechkd.students.ctc import CTCRecognizer

    model = make_student("conformer_ctc", tmp_path / "student")
    arpa = tmp_path / "lm.arpa"
    build_decoding_lm(DecodingLMConfig(text=str(synth_corpus / "train.jsonl")), arpa)
    dev = read_manifest(synth_corpus / "dev.jsonl")
    grid = [BeamSearchOptions(beam_size=2, lm_weight=w) for w in (0.0, 0.5, 2.0)]
    rows = sweep_ctc_decoding(CTCRecognizer(model), dev, arpa, grid)
    assert sorted(r["lm_weight"] for r in rows) == [0.0, 0.5, 2.0]
    assert [r["wer"] for r in rows] == sorted(r["wer"] for r in rows) and all(r["wer"] >= 0 for r in rows)
    best = BeamSearchOptions(**{k: v for k, v in rows[0].items() if k != "wer"})
    hyps = CTCRecognizer(model, lm=arpa, beam=best).transcribe([decode(u) for u in dev])
    assert score([u.text for u in dev], hyps).wer == rows[0]["wer"]  # the sweep decodes what eval decodes
