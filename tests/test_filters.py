"""Pseudo-label filters: each scorer, AUROC maths, combining and selection, the report, bad input, CLI, end to end."""

import itertools
import json
import math
import random

import numpy as np
import pytest

from speechkd.config import ConfigError, load_config
from speechkd.filters import (FilterConfig, FilterError, auroc, average_ranks, filter_labels, format_report,
                              lowest_fraction, rank_average, repeated_ngram_share, robust_z, run_filter, with_thresholds)
from speechkd.io import read_jsonl, write_jsonl
from speechkd.lm import KneserNeyLM, load_text_scorer, train_ngram

GOOD = ["the cat sat on the mat", "she sells sea shells by the sea shore", "a quick brown fox jumps over the dog",
        "we walked home after the long meeting", "rain fell on the quiet little town", "he read the letter twice"]


def rec(i, text, ref=None, *, logprob=-0.2, entropy=0.5, no_speech=0.01, duration=None, hyps=None,
        teacher="bundled:base"):
    r = {"id": f"u{i:03d}", "text": text, "avg_logprob": logprob, "mean_entropy": entropy, "no_speech_prob": no_speech,
         "duration": duration if duration is not None else 0.07 * max(len(text), 10), "language": "en",
         "teacher": {"name": teacher, "revision": "r1", "backend": "ctranslate2"}}
    if hyps is not None:
        r["hypotheses"] = hyps
    if ref is not None:
        r["reference"] = ref
    return r


def corpus():
    """Six good labels (confident, agree with samples) and three bad ones (unsure, samples disagree)."""
    recs = [rec(i, t, t, logprob=-0.1 - 0.01 * i, entropy=0.3 + 0.01 * i, hyps=[t, t]) for i, t in enumerate(GOOD)]
    recs.append(rec(6, "the cap sad on a mat", "the cat sat on the mat", logprob=-1.4, entropy=2.0,
                    hyps=["the cat sat on the mat", "a cap sat on mat"]))
    recs.append(rec(7, "she sells", "she sells sea shells by the sea shore", logprob=-1.2, entropy=1.8,
                    hyps=["she sells sea shells", "he sells sea shells by the shore"]))
    recs.append(rec(8, "thank you " * 12, "rain fell on the quiet little town",
                    logprob=-0.9, entropy=1.5, hyps=["rain fell on the quite town", "thank you"]))
    return recs


def proxy_of(recs):
    return [{"id": r["id"], "text": r.get("reference", r["text"]),
             "teacher": {"name": "bundled:tiny.en", "revision": "r2"}} for r in recs]


# ------------------------------------------------------------------------------------------ rank maths


def brute_auroc(scores, pos):
    p = [s for s, y in zip(scores, pos) if y]
    n = [s for s, y in zip(scores, pos) if not y]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(p, n))
    return wins / (len(p) * len(n))


def test_auroc_matches_pair_count_with_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]) for _ in range(n)]
        pos = [rng.random() < 0.4 for _ in range(n)]
        if all(pos) or not any(pos):
            continue
        assert auroc(scores, pos) == pytest.approx(brute_auroc(scores, pos))
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert auroc([1, 1, 1, 1], [False, True, False, True]) == 0.5
    assert math.isnan(auroc([1, 2], [True, True]))  # one class: undefined
    assert auroc([1, float("nan"), 3], [False, True, True]) == 1.0  # NaN scores are left out


def test_average_ranks_and_rank_average():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    comb = rank_average([[1, 2, 3, 4], [4, 3, 2, 1]])
    assert np.allclose(comb, 0.625)  # opposite orders cancel
    comb = rank_average([[1, 2, float("nan")], [1, 2, 3]])
    assert comb[2] == pytest.approx(1.0) and comb[0] < comb[1]  # NaN skipped: only the second column counts
    assert math.isnan(rank_average([[float("nan"), 1.0]])[0])


def test_lowest_fraction_counts_ties_and_nan():
    mask = lowest_fraction([5, 1, float("nan"), 3, 3, 0], 0.5)
    assert mask.tolist() == [False, True, False, True, False, True]  # 3 kept, the tie broken by order
    assert lowest_fraction([float("nan"), 1.0], 0.5).tolist() == [False, True]
    assert lowest_fraction([1, 2, 3], 1.0).all()


def test_robust_z_flags_outlier():
    z = robust_z(np.log(np.array([14, 15, 16, 15, 14, 16, 15, 60.0])))
    assert z[-1] > 3.5 and (z[:-1] < 2).all()


# ------------------------------------------------------------------------------------------- scorers


def scores_of(recs, names, **cfg_kw):
    out, _ = filter_labels(recs, FilterConfig(scorers=tuple(names), combine=(), **cfg_kw),
                           proxy=proxy_of(recs) if "proxy_wer" in names else None)
    return {n: [r["scores"][n] for r in out] for n in names}


def test_confidence_scorers_are_badness():
    s = scores_of(corpus(), ["nll", "entropy", "no_speech"])
    assert s["nll"][0] == pytest.approx(0.1) and s["nll"][6] == pytest.approx(1.4)
    assert s["entropy"][6] == pytest.approx(2.0) and s["no_speech"][0] == pytest.approx(0.01)


def test_hallucination_scorers():
    s = scores_of(corpus(), ["compression", "repeats"])
    assert s["compression"][8] == max(s["compression"])  # "thank you" x4
    assert s["repeats"][8] > 0.5 and s["repeats"][0] == 0.0
    assert repeated_ngram_share("a b c a b c".split(), 3) == pytest.approx(0.25)  # abc bca cab abc
    assert repeated_ngram_share(["a", "b"], 3) == 0.0


def test_rate_scorer_finds_too_short_and_too_long_labels():
    recs = [rec(i, t, duration=0.07 * len(t) * (1 + 0.04 * (i % 3))) for i, t in enumerate(GOOD * 2)]
    recs.append(rec(20, "hi", duration=8.0))  # a 2-character label for 8 s of audio: words were dropped
    recs.append(rec(21, "la " * 60, duration=2.0))  # 120 characters in 2 s: a repetition loop
    s = scores_of(recs, ["rate"])["rate"]
    assert s[-1] > 3.5 and s[-2] > 3.5 and max(s[:-2]) < 3.5
    w = scores_of(recs, ["rate"], rate_unit="words")["rate"]
    assert w[-2] > 3.5


def test_agreement_scorers():
    s = scores_of(corpus(), ["sample_wer", "proxy_wer"])
    assert s["sample_wer"][0] == 0.0 and s["sample_wer"][6] > 30
    assert s["proxy_wer"][:6] == [0.0] * 6 and s["proxy_wer"][7] > 50  # proxy = the references here


def test_supervised_wer_scorer():
    s = scores_of(corpus(), ["wer_ref"])["wer_ref"]
    assert s[:6] == [0.0] * 6 and s[6] == pytest.approx(50.0)


def test_kneser_ney_is_normalised_and_prefers_fluent_text():
    lm = KneserNeyLM(GOOD * 3, order=3)
    for hist in [(), ("the",), ("on", "the"), ("never", "seen")]:
        total = sum(lm.prob(w, hist) for w in lm.vocab) + lm.prob("<unk>", hist)
        assert total == pytest.approx(1.0)
    assert lm.nll_per_word("the cat sat on the mat") < lm.nll_per_word("mat the on sat cat the")
    assert lm.nll_per_word("the cat sat on the mat") < lm.nll_per_word("zorp blick fnar")


def test_shipped_ngram_and_exclusion():
    sent = "The half or wholly starved prisoners fished for alms or food at the gratings."
    seen = train_ngram(order=3)
    unseen = train_ngram(order=3, exclude=[sent])
    assert seen.n_sentences - unseen.n_sentences >= 1
    assert seen.nll_per_word(sent) < unseen.nll_per_word(sent)  # excluded: no memorised trigram path any more
    assert unseen.nll_per_word(sent) < unseen.nll_per_word("gratings the alms starved or fished wholly half")


def test_lm_scorer_excludes_references_by_default(tmp_path):
    sent = "The half or wholly starved prisoners fished for alms or food at the gratings."
    recs = [rec(0, sent, sent), rec(1, "the cat sat on the mat", "the cat sat on the mat")]
    leak = scores_of(recs, ["lm"], lm_exclude_references=False)["lm"][0]
    clean = scores_of(recs, ["lm"])["lm"][0]
    assert clean > leak
    (tmp_path / "ex.jsonl").write_text(json.dumps({"text": sent}) + "\n")
    via_file = scores_of(recs, ["lm"], lm_exclude_references=False, lm_exclude=(str(tmp_path / "ex.jsonl"),))["lm"][0]
    assert via_file == pytest.approx(clean)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A random 2-layer GPT-2 with a byte-level tokenizer, saved with save_pretrained (no downloads)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_gpt2")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet + ["<|endoftext|>"])}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(alphabet) + 1, n_positions=256, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_hf_causal_lm_scorer(tiny_gpt2_dir):
    score = load_text_scorer(str(tiny_gpt2_dir))
    a, b, c = score(["the cat sat", "the cat sat on the mat", ""], ["en"] * 3)
    assert all(math.isfinite(x) and x > 0 for x in (a, b, c))
    # Batched with padding == one at a time.
    assert score(["the cat sat on the mat"], ["en"])[0] == pytest.approx(b, rel=1e-4)
    s = scores_of(corpus(), ["lm"], lm_model=str(tiny_gpt2_dir))["lm"]
    assert all(math.isfinite(x) for x in s)
    with pytest.raises(FilterError, match="cannot load a causal LM"):
        scores_of(corpus(), ["lm"], lm_model=str(tiny_gpt2_dir / "nope"))


# -------------------------------------------------------------------------------- combine and select


def test_threshold_selection_and_drop_reasons():
    out, report = filter_labels(corpus(), FilterConfig(scorers=("nll", "sample_wer", "compression", "entropy")))
    keep = [r["keep"] for r in out]
    assert keep == [True] * 6 + [False] * 3
    assert out[6]["drop_reasons"] == ["nll", "sample_wer"] and "compression" in out[8]["drop_reasons"]
    f = report["filters"]
    assert f["nll"]["n_over_threshold"] == 2 and f["entropy"]["threshold"] is None
    assert f["compression"]["n_dropped_only_by_this"] == 0  # record 8 is also over the sample_wer threshold
    assert report["n_kept"] == 6 and report["n_dropped"] == 3
    # Overrides: NAME=none turns a filter into rank-only.
    cfg = with_thresholds(FilterConfig(scorers=("nll",)), ["nll=none"])
    assert filter_labels(corpus(), cfg)[1]["n_kept"] == 9


def test_fraction_selection_by_combined_rank():
    cfg = FilterConfig(select="fraction", keep_fraction=2 / 3)
    out, report = filter_labels(corpus(), cfg, proxy=proxy_of(corpus()))
    assert report["combined_members"] == ["proxy_wer", "sample_wer", "nll", "entropy"]
    assert [r["keep"] for r in out] == [True] * 6 + [False] * 3
    assert report["n_outside_fraction"] == 3 and "combined outside the best" in out[7]["drop_reasons"][0]
    both = FilterConfig(scorers=("nll",), select="both", keep_fraction=1.0, rank_by="nll", thresholds={"nll": 1.3})
    assert [r["keep"] for r in filter_labels(corpus(), both)[0]].count(False) == 1


def test_report_quality_section_and_markdown():
    out, report = filter_labels(corpus(), FilterConfig(select="fraction", keep_fraction=2 / 3), proxy=proxy_of(corpus()))
    q = report["quality"]
    assert q["n_with_reference"] == 9 and set(q["n_bad"]) == {"10", "20", "50"}
    assert q["auroc"]["combined"]["20"] == 1.0 and q["auroc"]["nll"]["20"] == 1.0
    assert q["wer_kept"] == 0.0 and q["wer_dropped"] > 50 and q["wer_all"] > q["wer_kept"]
    assert q["operating_point"]["20"] == {"n_bad": 3, "n_dropped": 3, "n_bad_dropped": 3, "precision": 1.0, "recall": 1.0}
    md = format_report(report)
    assert "6 of 9 kept" in md and "| `combined` |" in md and "WER > 20%" in md and "precision" in md
    json.dumps(report)  # plain JSON


def test_label_free_filters_run_without_references():
    recs = [{k: v for k, v in r.items() if k != "reference"} for r in corpus()]
    out, report = filter_labels(recs, FilterConfig())
    assert "quality" not in report and report["n_kept"] == 6
    assert "proxy_wer" in report["not_run"] and "wer_ref" not in report["filters"]


# ------------------------------------------------------------------------------------------ bad input


def test_missing_field_names_field_and_labelling_option():
    recs = corpus()
    for r in recs:
        del r["hypotheses"]
    with pytest.raises(FilterError, match=r"`hypotheses`.*--num-samples"):
        filter_labels(recs, FilterConfig(scorers=("sample_wer",)))
    recs = corpus()
    del recs[3]["avg_logprob"]
    with pytest.raises(FilterError, match=r"nll.*`avg_logprob`, missing in 1 of 9 records \(e.g. u003\).*speechkd label"):
        filter_labels(recs, FilterConfig(scorers=("nll",)))
    # In automatic mode a scorer without its field is skipped and reported, not fatal.
    _, report = filter_labels(recs, FilterConfig())
    assert "avg_logprob" in report["not_run"]["nll"]


def test_supervised_filter_refuses_without_references():
    recs = [{k: v for k, v in r.items() if k != "reference"} for r in corpus()]
    with pytest.raises(FilterError, match="supervised filter 'wer_ref' needs references"):
        filter_labels(recs, FilterConfig(scorers=("wer_ref",)))


def test_proxy_problems():
    recs = corpus()
    with pytest.raises(FilterError, match="needs proxy labels"):
        filter_labels(recs, FilterConfig(scorers=("proxy_wer",)))
    same = [{"id": r["id"], "text": r["text"], "teacher": r["teacher"]} for r in recs]
    with pytest.raises(FilterError, match="same model"):
        filter_labels(recs, FilterConfig(scorers=("proxy_wer",)), proxy=same)
    partial = proxy_of(recs)[:-2]
    with pytest.raises(FilterError, match=r"2 of 9 label ids have no transcript.*proxy_missing"):
        filter_labels(recs, FilterConfig(scorers=("proxy_wer",)), proxy=partial)
    out, _ = filter_labels(recs, FilterConfig(scorers=("proxy_wer",), proxy_missing="nan"), proxy=partial)
    assert out[-1]["scores"]["proxy_wer"] is None and out[-1]["keep"]  # NaN never drops


def test_other_bad_input():
    with pytest.raises(FilterError, match="no label records"):
        filter_labels([], FilterConfig())
    with pytest.raises(FilterError, match="duplicate ids"):
        filter_labels(corpus() + corpus()[:1], FilterConfig())
    with pytest.raises(ConfigError, match="unknown scorer 'confidence'"):
        load_config(FilterConfig, None, scorers=["confidence"])
    with pytest.raises(ConfigError, match="keep_fraction"):
        load_config(FilterConfig, None, keep_fraction=0.0)
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        with_thresholds(FilterConfig(), ["nll"])
    with pytest.raises(FilterError, match="not among the scorers"):
        filter_labels(corpus(), FilterConfig(scorers=("nll",), combine=("entropy",)))


def test_empty_result_says_which_filter_removed_what(tmp_path):
    write_jsonl(tmp_path / "labels.jsonl", corpus())
    cfg = FilterConfig(scorers=("nll", "entropy"), thresholds={"nll": 0.05, "entropy": 0.2})
    with pytest.raises(FilterError, match=r"no record survived.*nll \(threshold 0.05\) dropped 9; entropy \(threshold 0.2\) dropped 9"):
        run_filter(cfg, tmp_path / "labels.jsonl", tmp_path / "kept.jsonl")
    assert not (tmp_path / "kept.jsonl").exists()
    assert (tmp_path / "kept.scored.jsonl").exists() and (tmp_path / "kept.report.md").exists()


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_round_trip(tmp_path, capsys):
    from speechkd.cli import main

    labels, proxy = tmp_path / "labels.jsonl", tmp_path / "proxy.jsonl"
    write_jsonl(labels, corpus())
    write_jsonl(proxy, proxy_of(corpus()))
    out = tmp_path / "f" / "kept.jsonl"
    rc = main(["filter", "--labels", str(labels), "--out", str(out), "--proxy-labels", str(proxy),
               "--scorers", "proxy_wer,nll,entropy,compression", "--threshold", "proxy_wer=25", "--threshold", "nll=none"])
    assert rc == 0
    kept = list(read_jsonl(out))
    scored = list(read_jsonl(out.with_name("kept.scored.jsonl")))
    assert [r["id"] for r in kept] == [f"u{i:03d}" for i in range(6)] and all(r["keep"] for r in kept)
    assert len(scored) == 9 and set(scored[0]["scores"]) == {"proxy_wer", "nll", "entropy", "compression", "combined"}
    report = json.loads(out.with_name("kept.report.json").read_text())
    assert report["filters"]["proxy_wer"]["threshold"] == 25 and report["filters"]["nll"]["threshold"] is None
    assert "AUROC" in out.with_name("kept.report.md").read_text()
    assert "proxy_labels" in out.with_name("kept.config.yaml").read_text()
    assert "6 of 9 kept" in capsys.readouterr().out
    # Errors come back as exit status 2 with the message.
    rc = main(["filter", "--labels", str(labels), "--out", str(tmp_path / "k2.jsonl"), "--scorers", "proxy_wer"])
    assert rc == 2 and "needs proxy labels" in capsys.readouterr().err
    rc = main(["filter", "--labels", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "k3.jsonl")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_on_synthetic_corpus(tiny_en, synth_corpus, tmp_path):
    from speechkd.data import open_data
    from speechkd.label import LabelConfig, pseudo_label

    utts = open_data(synth_corpus)
    recs = list(pseudo_label(utts, tiny_en, LabelConfig(num_samples=1, pack=True, batch_size=8), progress=False))
    write_jsonl(tmp_path / "labels.jsonl", recs)
    cfg = FilterConfig(select="fraction", keep_fraction=0.7)
    report = run_filter(cfg, tmp_path / "labels.jsonl", tmp_path / "kept.jsonl")
    assert report["n_kept"] == round(0.7 * len(recs))
    assert {"nll", "entropy", "sample_wer", "lm", "rate", "combined"} <= set(report["filters"])
    q = report["quality"]
    assert q["n_with_reference"] == len(recs) and q["wer_all"] > 0
    assert q["wer_kept"] <= q["wer_all"] + 1e-9
    assert all(v is None or 0 <= v <= 1 for row in q["auroc"].values() for v in row.values())
    assert len(list(read_jsonl(tmp_path / "kept.jsonl"))) == report["n_kept"]
