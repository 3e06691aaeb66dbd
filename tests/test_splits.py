"""Speaker-disjoint splits: stratified, reproducible, and refused when a speaker crosses sides."""

import json
from pathlib import Path

import pytest

from speechkd.cli import main
from speechkd.data import DataError, Utterance
from speechkd.splits import (SplitConfig, apply_speaker_split, check_disjoint, load_split, make_speaker_split)

ROOT = Path(__file__).resolve().parents[1]


def _utts(n_children=8, n_adults=12, per_speaker=3):
    out = []
    for k in range(n_children + n_adults):
        age = 8 if k < n_children else 30
        for j in range(per_speaker):
            out.append(Utterance(id=f"s{k}_{j}", audio=f"/x/s{k}_{j}.wav", speaker=f"s{k}", duration=2.0,
                                 meta={"age": age}))
    return out


def test_split_is_by_speaker_stratified_and_reproducible():
    utts = _utts()
    cfg = SplitConfig(speakers=(12, 3, 5))
    split = make_speaker_split(utts, cfg)
    assert [len(split[n]) for n in ("train", "dev", "test")] == [12, 3, 5]
    assert split == make_speaker_split(utts, cfg) != make_speaker_split(utts, SplitConfig(speakers=(12, 3, 5), seed=1))
    parts = apply_speaker_split(utts, split)
    for name, part in parts.items():
        ages = {u.meta["age"] for u in part}
        assert ages == {8, 30}, name  # children and adults on every side
    assert sum(map(len, parts.values())) == len(utts)


def test_an_utterance_level_split_is_refused():
    utts = _utts()
    with pytest.raises(DataError, match="on more than one side"):
        check_disjoint({"train": utts[::2], "test": utts[1::2]})


def test_split_file_errors_name_the_file(tmp_path):
    utts = _utts()
    with pytest.raises(DataError, match="other.json: 1 speakers are not in the data"):
        apply_speaker_split(utts, {"train": [f"s{k}" for k in range(20)] + ["nobody"]}, where="other.json")
    with pytest.raises(DataError, match="in no split"):
        apply_speaker_split(utts, {"train": ["s0"]}, where="f.json")
    with pytest.raises(DataError, match="in both"):
        apply_speaker_split(utts, {"a": ["s0"], "b": ["s0"]}, where="f.json")
    no_speaker = [Utterance(id="a", audio="/x/a.wav")]
    with pytest.raises(DataError, match="m.jsonl: 1 utterances have no `speaker`"):
        make_speaker_split(no_speaker, where="m.jsonl")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="bad.json: not a speaker split file"):
        load_split(bad)


def test_cli_makes_and_applies_a_split(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(u.to_record()) + "\n" for u in _utts()))
    assert main(["split", "--data", str(manifest), "--out", str(tmp_path / "a"), "--speakers", "12,3,5"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and {r["speaker"] for r in rows} == set(load_split(tmp_path / "a" / "split.json")["test"])
    assert main(["split", "--data", str(manifest), "--out", str(tmp_path / "b"),
                 "--split-file", str(tmp_path / "a" / "split.json")]) == 0
    assert (tmp_path / "b" / "test.jsonl").read_text() == (tmp_path / "a" / "test.jsonl").read_text()
    (tmp_path / "c.json").write_text(json.dumps({"splits": {"train": ["ghost"]}}))
    capsys.readouterr()
    assert main(["split", "--data", str(manifest), "--out", str(tmp_path / "c"), "--split-file",
                 str(tmp_path / "c.json")]) == 2
    assert "c.json" in capsys.readouterr().err


def test_the_committed_speechocean_split():
    split = load_split(ROOT / "data" / "splits" / "speechocean762_train.json")
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 85, "dev": 15, "test": 25}
    every = [s for v in split.values() for s in v]
    assert len(every) == len(set(every)) == 125
