import pytest

from speechkd.metrics import bytes_on_disk, real_time_factor, score, utterance_wer
from speechkd.text import normalize


def test_normalize_english_and_basic():
    assert normalize("Mr. Smith didn't pay $20, did he?") == normalize("mister smith did not pay $20 did he")
    assert normalize("Hello, World!", language="de") == "hello world"
    assert normalize(None) == ""


def test_score_counts_and_per_utterance():
    r = score(["the cat sat", "a b"], ["the cat sat", "a x b"], ids=["u1", "u2"])
    assert r.ref_words == 5 and r.insertions == 1 and r.substitutions == 0
    assert r.wer == pytest.approx(20.0)
    assert [u.id for u in r.per_utterance] == ["u1", "u2"]
    assert r.per_utterance[0].wer == 0.0 and r.per_utterance[1].errors == 1
    assert "REF:" in r.per_utterance[1].alignment


def test_score_normalises_both_sides():
    r = score(["Dr. Jones colour"], ["doctor jones color"])
    assert r.wer == 0.0


def test_empty_reference_and_mismatched_lengths():
    assert utterance_wer("", "") == 0.0
    assert utterance_wer("", "hello there") == 200.0
    with pytest.raises(ValueError):
        score(["a"], [])


def test_rtf_and_bytes(tmp_path):
    assert real_time_factor(1.0, 4.0) == 0.25
    with pytest.raises(ValueError):
        real_time_factor(1.0, 0)
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"x" * 5)
    assert bytes_on_disk(tmp_path) == 15
