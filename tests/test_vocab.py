"""CTC vocabularies: the normalisation rule, round trips, out-of-vocabulary counting, tokens.txt files."""

from __future__ import annotations

import pytest

from speechkd.vocab import (BLANK, SPACE, OOVStats, VocabConfig, VocabError, Vocabulary, build_vocabulary,
                            normalize_label, read_tokens)

TEXTS = ["Hello, world!", "It’s a well-known test: 42 cats.", "hello again"]


def test_normalisation_rule():
    assert normalize_label("It’s a well-known test: 42 cats.") == "it's a well known test 42 cats"
    assert normalize_label("  Ｆｕｌｌ　width\tand  $5 € 🙂 ") == "full width and 5"  # NFKC, symbols removed
    assert normalize_label("Café", lowercase=False) == "Café"
    assert normalize_label("") == "" and normalize_label(None) == ""


def test_char_vocabulary_layout_and_round_trip():
    vocab = build_vocabulary(TEXTS)
    assert vocab.tokens[0] == BLANK and vocab.blank_id == 0 and vocab.tokens[1] == SPACE
    assert vocab.tokens[2:] == sorted(vocab.tokens[2:])  # deterministic: code-point order
    for text in TEXTS:
        ids = vocab.encode(text)
        assert 0 not in ids
        assert vocab.decode(ids) == normalize_label(text)
    # Blanks in the id stream are ignored by decode (CTC output that was collapsed but not cleaned).
    assert vocab.decode([0, *vocab.encode("hello"), 0]) == "hello"


def test_out_of_vocabulary_characters_are_dropped_and_counted():
    vocab = build_vocabulary(["abc abc"])
    stats = OOVStats()
    ids = vocab.encode("abz cab zz q", stats)
    # z and q are unknown: dropped, and the spaces around the now-empty words collapse.
    assert vocab.decode(ids) == "ab cab"
    assert stats.dropped == {"z": 3, "q": 1} and stats.num_dropped == 4
    assert stats.num_labels == 1 and stats.num_chars == len("abz cab zz q")
    report = stats.to_dict()
    assert report["dropped_chars"] == {"z": 3, "q": 1} and report["dropped_rate"] == pytest.approx(4 / 12, abs=1e-6)
    assert vocab.encode("zzz", stats) == []


def test_min_count_leaves_rare_characters_out():
    vocab = build_vocabulary(["aab", "aa"], VocabConfig(min_count=2))
    assert "b" not in vocab.tokens and "a" in vocab.tokens


def test_tokens_txt_is_sherpa_format_and_reloads(tmp_path):
    vocab = build_vocabulary(TEXTS)
    vocab.save(tmp_path)
    lines = (tmp_path / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<blk> 0" and lines[1] == "▁ 1" and len(lines) == len(vocab)
    assert all(line.rsplit(" ", 1)[1] == str(i) for i, line in enumerate(lines))
    again = Vocabulary.load(tmp_path)
    assert again.tokens == vocab.tokens and again.kind == "char"
    assert again.encode(TEXTS[1]) == vocab.encode(TEXTS[1])


def test_bpe_vocabulary_round_trip(tmp_path):
    texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 5
    vocab = build_vocabulary(texts, VocabConfig(kind="bpe", bpe_vocab_size=40))
    assert vocab.kind == "bpe" and vocab.tokens[0] == BLANK and len(vocab) <= 40
    assert any(t.startswith(SPACE) and len(t) > 1 for t in vocab.tokens)  # word-initial pieces carry ▁
    stats = OOVStats()
    ids = vocab.encode("The cat, the dog!", stats)
    assert vocab.decode(ids) == "the cat the dog" and stats.num_dropped == 0
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.encode("the mat") == vocab.encode("the mat")
    # Unknown characters are dropped and counted here too.
    stats = OOVStats()
    assert vocab.decode(vocab.encode("the qat", stats)) == "the at" and stats.dropped == {"q": 1}


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(VocabError, match="no usable label text"):
        build_vocabulary(["", "!!!"])
    with pytest.raises(VocabError, match="no tokens.txt"):
        Vocabulary.load(tmp_path)
    (tmp_path / "tokens.txt").write_text("<blk> 0\na 2\n")
    with pytest.raises(VocabError, match="without gaps"):
        read_tokens(tmp_path / "tokens.txt")
    with pytest.raises(VocabError, match="blank"):
        Vocabulary(["a", BLANK])
