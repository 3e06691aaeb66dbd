"""The shared training loop and the Distil-Whisper method, on the tiny random Whisper and a tiny corpus."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechkd.io import write_jsonl
from speechkd.losses import IGNORE_INDEX, cross_entropy, ctc_loss, distillation_loss, hidden_state_loss, kl_divergence
from conftest import free_port
from speechkd.train import RunConfig, TrainConfig, TrainingError, batch_plan, rank_batches, Dist, train

# ------------------------------------------------------------------------------------------ losses


def test_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert kl_divergence(logits, logits, mask).abs() < 1e-6
    other = torch.randn(2, 3, 7)
    assert kl_divergence(logits, other, mask) > 0


def test_kl_matches_the_definition_with_temperature_squared_and_mask():
    torch.manual_seed(1)
    s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    mask = torch.tensor([[True, False]])
    temp = 3.0
    p = torch.softmax(t[0, 0] / temp, -1)
    q = torch.softmax(s[0, 0] / temp, -1)
    expected = (p * (p.log() - q.log())).sum() * temp**2
    assert torch.allclose(kl_divergence(s, t, mask, temp), expected, atol=1e-6)


def test_cross_entropy_ignores_masked_labels():
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = 10.0
    labels = torch.tensor([[1, IGNORE_INDEX]])
    assert cross_entropy(logits, labels) < 1e-3


def test_distillation_loss_combines_weights():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    labels = torch.tensor([[1, 2, IGNORE_INDEX], [0, 5, 4]])
    total, logs = distillation_loss(s, t, labels, ce_weight=0.8, kl_weight=1.0, temperature=2.0)
    assert math.isclose(float(total), 0.8 * logs["ce"] + logs["kl"], rel_tol=1e-5)
    ce_only, logs = distillation_loss(s, None, labels, kl_weight=0.0)
    assert "kl" not in logs and math.isclose(float(ce_only), 0.8 * logs["ce"], rel_tol=1e-6)


def test_ctc_loss_is_finite_and_lower_for_the_right_path():
    good = torch.full((1, 4, 3), -10.0)
    for t, k in enumerate([1, 0, 2, 0]):  # labels 1, 2 with blanks
        good[0, t, k] = 0.0
    good = good.log_softmax(-1)
    bad = torch.zeros(1, 4, 3).log_softmax(-1)
    args = (torch.tensor([4]), torch.tensor([[1, 2]]), torch.tensor([2]))
    assert ctc_loss(good, *args) < ctc_loss(bad, *args)


def test_hidden_state_loss_zero_at_identity():
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert hidden_state_loss(x, x, mask, cosine_weight=0.0).abs() < 1e-6
    assert hidden_state_loss(x, -x, mask) > hidden_state_loss(x, x, mask)


# ------------------------------------------------------------------------------------------ batching


def test_batch_plan_is_deterministic_covers_every_item_and_groups_lengths():
    lengths = [float(i % 17) for i in range(103)]
    a = batch_plan(lengths, 4, seed=1, epoch=0, group=5)
    assert a == batch_plan(lengths, 4, seed=1, epoch=0, group=5)
    assert a != batch_plan(lengths, 4, seed=1, epoch=1, group=5)
    assert sorted(i for b in a for i in b) == list(range(103))
    shares = [rank_batches(a, Dist(rank=r, world=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(a) // 2


# ------------------------------------------------------------------------------------------ whisper_kd


@pytest.fixture(scope="module")
def kd_labels(synth_corpus, tmp_path_factory):
    """Pseudo-label records for the corpus's train+dev splits (references stand in for teacher labels)."""
    from speechkd.data import open_data

    utts = open_data(synth_corpus / "train.jsonl", require_text=True) + open_data(synth_corpus / "dev.jsonl")
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    write_jsonl(path, [{"id": u.id, "audio": u.audio, "text": u.text, "reference": u.text, "duration": u.duration}
                       for u in utts])
    return path


def kd_run(labels, tiny_whisper_dir, **train_kw) -> RunConfig:
    train_cfg = dict(max_steps=4, batch_size=2, lr=1e-3, warmup_steps=1, save_every=2, log_every=1, seed=3)
    train_cfg.update(train_kw)
    return RunConfig(method="whisper_kd", labels=str(labels), teacher=str(tiny_whisper_dir), student_type="whisper",
                     student={"decoder_layers": 1}, method_config={"pack": False, "timestamp_probability": 0.5},
                     train=TrainConfig(**train_cfg))


def test_whisper_kd_trains_saves_and_reloads(kd_labels, tiny_whisper_dir, tmp_path):
    from speechkd.students import load_student

    final = train(kd_run(kd_labels, tiny_whisper_dir), tmp_path / "run", progress=False)
    student = load_student(final)
    assert student.config.decoder_layers == 1 and student.config.encoder_layers == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["kl"] >= 0 for r in rows if "loss" in r)
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "log" / "train.log").is_file()
    # The frozen shared encoder's output was cached once per window and reused.
    cache = list((tmp_path / "run" / "encoder_cache").glob("*.npy"))
    assert 0 < len(cache) <= 8  # 4 steps x 2 windows, fewer when an epoch revisits windows


def test_progress_is_a_tqdm_bar_on_stderr_beside_the_log_lines(kd_labels, tiny_whisper_dir, tmp_path, capsys):
    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=2, save_every=0)
    train(run, tmp_path / "shown", progress=True)
    err = capsys.readouterr().err
    bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("train whisper_kd:")]
    assert bar and "2/2" in bar[-1] and re.search(r"<[0-9:]+, +[0-9.]+(step/s|s/step), loss=[0-9.]+, lr=", bar[-1])
    logged = (tmp_path / "shown" / "log" / "train.log").read_text()
    assert "step 2: {" in logged and "step 2: {" in err  # the log lines still reach both
    train(run, tmp_path / "quiet", progress=False)
    err = capsys.readouterr().err
    assert "train whisper_kd:" not in err and "step 2: {" in err


def test_whisper_kd_trains_a_share_of_clips_alone_and_the_rest_packed(kd_labels, tiny_whisper_dir, tmp_path):
    from speechkd.students.whisper import create_student
    from speechkd.tasks.whisper_kd import Config, WhisperKDTask, unit_hash

    model = create_student(str(tiny_whisper_dir), decoder_layers=1)
    run = kd_run(kd_labels, tiny_whisper_dir)

    def plan(fraction):
        task = WhisperKDTask(Config(pack=True, single_clip_fraction=fraction), run, tmp_path / str(fraction), model)
        return [[task.utts[p.utt].id for p in w.pieces] for w in task.windows]

    packed, mixed, alone = plan(0.0), plan(0.5), plan(1.0)
    ids = sorted(i for w in alone for i in w)
    for windows in (packed, mixed):  # every utterance exactly once per epoch, whatever the mix
        assert sorted(i for w in windows for i in w) == ids
    assert all(len(w) == 1 for w in alone) and any(len(w) > 1 for w in packed)
    chosen = {i for i in ids if unit_hash(i) < 0.5}
    assert 0 < len(chosen) < len(ids)
    assert [[i] for i in sorted(chosen)] == sorted(w for w in mixed if w[0] in chosen)  # alone, each
    assert any(len(w) > 1 for w in mixed)
    with pytest.raises(ValueError, match="single_clip_fraction"):
        Config(single_clip_fraction=1.5).validate()


def test_whisper_kd_learns_a_fixed_batch(kd_labels, tiny_whisper_dir, tmp_path):
    """A tiny student fits a handful of windows: the loss must fall well below its start."""
    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=30, lr=3e-3, batch_size=4, save_every=0, log_every=5)
    run = RunConfig(**{**vars(run), "method_config": {"pack": True, "kl_weight": 0.0, "ce_weight": 1.0,
                                                       "timestamp_probability": 0.0}})
    train(run, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_after_interruption_is_exact(kd_labels, tiny_whisper_dir, tmp_path, monkeypatch):
    from speechkd.tasks.whisper_kd import WhisperKDTask

    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=5, save_every=2)
    train(run, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    original = WhisperKDTask.loss

    def crash_on_fourth(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed mid-step 4, after the step-2 checkpoint
        return original(self, model, batch)

    monkeypatch.setattr(WhisperKDTask, "loss", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(run, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(WhisperKDTask, "loss", original)
    train(run, tmp_path / "resumed", progress=False)

    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated rows after resume


def test_resume_with_a_different_config_is_refused(kd_labels, tiny_whisper_dir, tmp_path):
    train(kd_run(kd_labels, tiny_whisper_dir, max_steps=2), tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="different config.*lr"):
        train(kd_run(kd_labels, tiny_whisper_dir, max_steps=2, lr=5e-4), tmp_path / "run", progress=False)


def test_nan_loss_stops_with_step_ids_and_keeps_last_checkpoint(kd_labels, tiny_whisper_dir, tmp_path, monkeypatch):
    from speechkd.tasks.whisper_kd import WhisperKDTask

    original = WhisperKDTask.loss
    calls = {"n": 0}

    def nan_on_third(self, model, batch):
        calls["n"] += 1
        loss, logs = original(self, model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setattr(WhisperKDTask, "loss", nan_on_third)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3.*batch ids.*step-0000002"):
        train(kd_run(kd_labels, tiny_whisper_dir, max_steps=4), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors").is_file()


def test_empty_labels_and_incompatible_student_fail_before_work(kd_labels, tiny_whisper_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingError, match="empty"):
        train(kd_run(empty, tiny_whisper_dir), tmp_path / "a", progress=False)
    bad = kd_run(kd_labels, tiny_whisper_dir)
    bad = RunConfig(**{**vars(bad), "student": {"decoder_layers": 5}})
    with pytest.raises((TrainingError, ValueError), match="layers"):
        train(bad, tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_torchrun_two_processes_gloo(kd_labels, tiny_whisper_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m speechkd train` trains with averaged gradients and one final student."""
    import yaml

    from speechkd.config import to_dict

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(kd_run(kd_labels, tiny_whisper_dir, max_steps=2, batch_size=2))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "speechkd", "train",
                           "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "final" / "speechkd_student.json").is_file()
    assert (tmp_path / "ddp" / "log" / "train.rank1.log").is_file()
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["fingerprint"]["world_size"] == 2


def test_student_with_fewer_encoder_layers_trains_its_encoder_towards_the_teacher(kd_labels, tiny_whisper_dir, tmp_path):
    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=2)
    run = RunConfig(**{**vars(run), "student": {"decoder_layers": 1, "encoder_layers": 1},
                       "method_config": {"pack": False, "encoder_loss_weight": 1.0}})
    final = train(run, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["encoder"] > 0 for r in rows if "loss" in r)
    from speechkd.students import load_student

    assert load_student(final).config.encoder_layers == 1


def test_student_from_another_pretrained_whisper_learns_the_pseudo_labels_in_its_own_tokens(
        kd_labels, tiny_whisper_dir, other_tiny_whisper_dir, tmp_path):
    from speechkd.students import build_student, load_student
    from speechkd.tasks.whisper_kd import build

    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=2)
    student = {"pretrained": str(other_tiny_whisper_dir), "decoder_layers": None}
    # Its token ids differ from the teacher's: comparing token distributions is refused before any work...
    with pytest.raises(TrainingError, match="kl_weight: 0"):
        train(RunConfig(**{**vars(run), "student": student}), tmp_path / "kl", progress=False)
    # ... and so is matching an encoder output of another width.
    with pytest.raises(TrainingError, match="encoder_loss_weight: 0"):
        train(RunConfig(**{**vars(run), "student": student,
                           "method_config": {"kl_weight": 0.0, "encoder_loss_weight": 1.0}}), tmp_path / "enc",
              progress=False)
    assert not (tmp_path / "kl" / "checkpoints").exists() and not (tmp_path / "enc" / "checkpoints").exists()

    seq = RunConfig(**{**vars(run), "student": student,
                       "method_config": {"pack": False, "kl_weight": 0.0, "timestamp_probability": 0.0}})
    # Targets are the pseudo-label in the student's tokens, after the student's prompt.
    model = build_student("whisper", student)
    task = build(seq, tmp_path / "task", model)
    text = task.utts[task.windows[0].pieces[0].utt].text
    tokens = task.student_io.tokenizer.encode(" " + text, add_special_tokens=False)
    labels = task.collate([0])["labels"][0]
    labels = labels[labels != -100].tolist()  # the tiny decoder's 40 positions truncate long sentences
    assert labels[:-1] == [task.no_timestamps, *tokens][: len(labels) - 1] and labels[-1] == task.eot
    assert tokens != task.teacher.tokenizer.encode(" " + text, add_special_tokens=False)

    final = train(seq, tmp_path / "seq", progress=False)
    trained = load_student(final)
    assert trained.config.d_model == 32 and trained.config.decoder_layers == 2
    rows = [json.loads(line) for line in (tmp_path / "seq" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["ce"]) and "kl" not in r for r in rows if "loss" in r)


def test_a_frozen_student_encoder_of_its_own_is_computed_once_per_window_and_cached(
        kd_labels, tiny_whisper_dir, other_tiny_whisper_dir, tmp_path):
    from speechkd.students import build_student
    from speechkd.tasks.whisper_kd import build

    run = kd_run(kd_labels, tiny_whisper_dir, max_steps=2)
    run = RunConfig(**{**vars(run), "student": {"pretrained": str(other_tiny_whisper_dir), "decoder_layers": 1},
                       "method_config": {"pack": False, "kl_weight": 0.0, "freeze_encoder": True}})
    model = build_student("whisper", run.student)
    task = build(run, tmp_path / "run", model)
    assert task.teacher_model is None  # nothing of the teacher's is needed: labels only
    batch = task.collate([0, 1])
    assert "input_features" not in batch and "encoder_hidden" not in batch
    samples, _, _ = task._window(0)
    with torch.no_grad():
        direct = model.model.encoder(torch.from_numpy(task.student_io.features([samples]))).last_hidden_state[0]
    assert torch.allclose(batch["student_hidden"][0], direct, atol=1e-2)  # fp16 cache
    cached = sorted((tmp_path / "run" / "encoder_cache").glob("*.npy"))
    assert len(cached) == 2 and np.load(cached[0]).shape == (1500, 32)
    assert torch.equal(task.collate([0, 1])["student_hidden"], batch["student_hidden"])  # read back, not recomputed
    assert len(list((tmp_path / "run" / "encoder_cache").glob("*.npy"))) == 2
    final = train(run, tmp_path / "run", progress=False)
    from speechkd.students import load_student

    trained = load_student(final)
    for name, p in model.model.encoder.state_dict().items():  # frozen: untouched by training
        assert torch.equal(p, trained.model.encoder.state_dict()[name])
