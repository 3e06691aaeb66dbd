"""The `speechkd` command line: thin commands over the library, clear errors with exit code 2."""

import json

import pytest

from speechkd.cli import main


@pytest.fixture
def cache_env(teacher_cache, monkeypatch):
    monkeypatch.setenv("SPEECHKD_CACHE", str(teacher_cache))


def test_eval_writes_results_config_and_per_utterance(synth_corpus, cache_env, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", "bundled:tiny.en", "--data", str(synth_corpus / "test.jsonl"), "--out", str(out),
               "--backend", "ctranslate2", "--num-threads", "2"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["num_utterances"] >= 2 and 0 <= res["wer"] < 100 and res["rtf"] > 0
    assert res["num_parameters"] > 30e6 and res["size_bytes"] > 30e6
    assert (out / "config.yaml").exists() and (out / "log" / "eval.log").exists()
    per_utt = [json.loads(x) for x in (out / "per_utterance.jsonl").read_text().splitlines()]
    assert {"id", "reference", "hypothesis", "wer", "alignment"} <= set(per_utt[0])
    assert "| bundled:tiny.en [ctranslate2] |" in capsys.readouterr().out


def test_eval_needs_references(synth_corpus, cache_env, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    row = json.loads((synth_corpus / "test.jsonl").read_text().splitlines()[0])
    manifest.write_text(json.dumps({"audio": str(synth_corpus / row["audio"])}) + "\n")
    assert main(["eval", "--data", str(manifest)]) == 2
    assert "text" in capsys.readouterr().err


def test_label_to_hf_dataset(synth_corpus, cache_env, tmp_path):
    import datasets

    out = tmp_path / "labels.jsonl"
    rc = main(["label", "--data", str(synth_corpus / "test.jsonl"), "--out", str(out), "--hf-out", str(tmp_path / "hf"),
               "--quiet", "--batch-size", "4"])
    assert rc == 0
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == len(out.read_text().splitlines()) and {"text", "avg_logprob", "reference"} <= set(ds.column_names)
    summary = json.loads((tmp_path / "labels.summary.json").read_text())
    assert summary["labelled_this_run"] == len(ds) and summary["audio_seconds_per_second"] > 0


@pytest.mark.parametrize("args,needle", [
    (["synth", "--out", "x", "--num-utterances", "0"], "num_utterances"),
    (["label", "--data", "nowhere/", "--out", "l.jsonl"], "nowhere"),
    (["label", "--data", ".", "--out", "l.jsonl", "--num-shards", "2", "--shard-id", "5"], "shard_id"),
    (["eval", "--model", "bundled:tiny.en"], "data is required"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_train_set_overrides_merge_at_every_depth():
    from speechkd.cli import merge_nested, parse_sets

    base = {"train": {"lr": 1e-4, "max_steps": 10}, "method_config": {"spec_augment": {"num_time_masks": 2, "max_time_mask": 0.05}}}
    sets = parse_sets(["train.max_steps=50", "method_config.spec_augment.max_time_mask=0.1"])
    merged = merge_nested(base, sets)
    assert merged["train"] == {"lr": 1e-4, "max_steps": 50}
    assert merged["method_config"]["spec_augment"] == {"num_time_masks": 2, "max_time_mask": 0.1}


def test_lm_from_labels_then_eval_a_ctc_student_with_it(synth_corpus, tmp_path, capsys):
    import yaml
    from test_export import make_student

    student = tmp_path / "student"
    make_student("conformer_ctc", student)
    arpa = tmp_path / "lm.arpa"
    assert main(["lm", "--text", str(synth_corpus / "train.jsonl"), "--out", str(arpa), "--order", "2"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.index("}") + 1])["sentences"] > 0 and (tmp_path / "lm.yaml").is_file()
    out = tmp_path / "eval"
    data = str(synth_corpus / "test.jsonl")
    assert main(["eval", "--model", str(student), "--data", data, "--lm", str(arpa), "--beam-size", "2",
                 "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["model"] == "conformer_ctc [torch + LM]"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lm"] == str(arpa) and saved["beam_size"] == 2
    capsys.readouterr()
    for args, needle in [(["--lm", str(tmp_path / "nope.arpa")], "nope.arpa"),
                         (["--lm", str(arpa), "--greedy"], "contradict"),
                         (["--lm", str(arpa), "--beam-size", "0"], "beam_size"),
                         (["--lm", str(arpa), "--model", "bundled:tiny.en"], "CTC students")]:
        assert main(["eval", "--model", str(student), "--data", data, *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
