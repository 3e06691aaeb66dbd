"""The recipes: option parsing, stage markers, and the demo recipe end to end in a reduced configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["demo", "whisper_distill", "ctc_edge"]


def run_recipe(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", str(ROOT / "recipes" / name / "run.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_has_usage_and_rejects_unknown_options(name):
    text = (ROOT / "recipes" / name / "run.sh").read_text()
    assert text.splitlines()[1].startswith("# Usage:")
    helped = run_recipe(name, "--help")
    assert helped.returncode == 0 and "Usage:" in helped.stdout
    bad = run_recipe(name, "--no-such-option", "1")
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr


def test_required_data_is_asked_for():
    proc = run_recipe("ctc_edge", "--stage=1")
    assert proc.returncode == 2 and "--data and --test are required" in proc.stderr


@pytest.mark.slow
def test_demo_recipe_end_to_end_reduced(tmp_path):
    """Synthesise -> label -> filter -> train -> eval -> int8 ONNX -> torch-free runtime -> table, on tiny.en."""
    exp = tmp_path / "demo"
    # 200 clips (160 to train on), 250 steps: ~7 min here. Fewer clips overfit (40 clips reached WER 113 %).
    args = ["--exp", str(exp), "--num-utterances", "200", "--steps", "250", "--threads", "2"]
    proc = run_recipe("demo", *args, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    corpus_train = [json.loads(line) for line in (exp / "corpus" / "train.jsonl").read_text().splitlines()]
    labels = [json.loads(line) for line in (exp / "labels" / "train.jsonl").read_text().splitlines()]
    skipped_path = exp / "labels" / "train.skipped.jsonl"
    skipped = [json.loads(line)["id"] for line in skipped_path.read_text().splitlines()] if skipped_path.exists() else []
    assert {r["id"] for r in labels} | set(skipped) == {r["id"] for r in corpus_train}
    kept = (exp / "labels" / "kept.jsonl").read_text().splitlines()
    assert 0 < len(kept) < len(labels)
    assert (exp / "student" / "final" / "speechkd_student.json").is_file()
    results = {name: json.loads((exp / "eval" / name / "results.json").read_text())
               for name in ("teacher", "student", "student_lm", "student_onnx_int8")}
    # At these settings the greedy student measured 93.7 % WER (CER 41 %) on the 20 test clips.
    for name in ("student", "student_lm", "student_onnx_int8"):
        assert results[name]["wer"] < 100.0 and results[name]["cer"] < 60.0, (name, results[name])
    assert results["student_lm"]["model"].endswith("[torch + LM]")
    assert results["student_onnx_int8"]["model"].endswith("+ LM]")  # the export ships the trigram; the runtime uses it
    assert results["student_onnx_int8"]["num_utterances"] == results["student"]["num_utterances"] > 0
    assert "int8" in results["student_onnx_int8"]["model"]
    assert "| model |" in proc.stdout and "student_onnx_int8" not in proc.stderr[-200:]
    assert sorted(p.name for p in (exp / ".done").iterdir())[-1] == "7.report"

    # Re-running skips every finished stage.
    again = run_recipe("demo", *args)
    assert again.returncode == 0 and again.stdout.count("done before, skipping") == 8


def test_whisper_distill_can_start_from_a_smaller_pretrained_whisper(tmp_path, tiny_whisper_dir, other_tiny_whisper_dir):
    proc = run_recipe("whisper_distill", "--stage", "3", "--stop-stage", "3", "--data", "unused", "--test", "unused",
                      "--exp", str(tmp_path), "--teacher", str(tiny_whisper_dir),
                      "--student-from", str(other_tiny_whisper_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from speechkd.students import load_student

    assert load_student(tmp_path / "init").config.d_model == 32  # the pretrained model, not a cut of the teacher
    # Stage 4's config for such a student parses and asks for what a student of another tokenizer can learn.
    import yaml

    from speechkd.config import from_dict
    from speechkd.tasks.whisper_kd import Config

    conf = yaml.safe_load((ROOT / "recipes" / "whisper_distill" / "conf" / "train_pretrained.yaml").read_text())
    method = from_dict(Config, conf["method_config"])
    assert method.kl_weight == 0 and method.freeze_encoder
