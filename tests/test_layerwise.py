"""Layer-wise distillation through the one loop: a method-owned module, student layers, the target store, audio only."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from speechkd.targets import TargetsConfig, extract_targets
from speechkd.train import RunConfig, TrainConfig, TrainingError, train
from test_encoders import _save_w2v, _wave

SR = 16_000
STUDENT = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 7, "subsampling_channels": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random HuBERT teacher, an audio folder without any text, and a target store of two layers."""
    root = tmp_path_factory.mktemp("layerwise")
    teacher = _save_w2v("hubert", "layer", root / "hubert")
    audio = root / "audio"
    audio.mkdir()
    for i in range(6):
        sf.write(audio / f"clip{i}.wav", _wave(0.6 + 0.15 * i, i), SR)
    store = root / "store"
    extract_targets(TargetsConfig(teacher=teacher, layers=(1, 2)), str(audio), store, progress=False)
    return teacher, audio, store


def _run(setup, **kw):
    teacher, audio, store = setup
    method = {"targets": str(store), "teacher_layers": [1, -1], "student_layers": [-1]}  # -1: the teacher's last
    method.update(kw.pop("method", {}))
    train_cfg = dict(max_steps=4, batch_size=2, log_every=1, save_every=2, warmup_steps=1, lr=1e-3)
    train_cfg.update(kw)
    return RunConfig(method="layerwise", labels=str(audio), teacher=teacher, student_type="conformer_ctc",
                     student=STUDENT, method_config=method, train=TrainConfig(**train_cfg))


def test_trains_from_an_audio_folder_with_the_heads_checkpointed_but_not_in_final(setup, tmp_path):
    final = train(_run(setup), tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"layer1", "layer2", "loss"} <= set(rows[0]) and rows[-1]["loss"] < rows[0]["loss"]
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000004"
    heads = load_file(str(ckpt / "task_modules.safetensors"))
    assert sorted(heads) == ["heads.t1.bias", "heads.t1.weight", "heads.t2.bias", "heads.t2.weight"]
    from speechkd.students import build_student, load_student
    from speechkd.vocab import build_vocabulary

    student = load_student(final)
    fresh = build_student("conformer_ctc", STUDENT, vocab=build_vocabulary(["abcdefghijklmnopqrstuvwxyz'"]))
    assert student.state_dict().keys() == fresh.state_dict().keys()  # no head, nothing of the method in final/
    assert load_file(str(final / "model.safetensors")).keys() == load_file(str(ckpt / "model.safetensors")).keys()


def test_a_student_trained_with_method_modules_exports_the_same_graph(setup, tmp_path):
    import onnx

    from speechkd.onnx_export import ExportConfig, export_student
    from speechkd.students import build_student, save_student

    from speechkd.students import load_student

    final = train(_run(setup, max_steps=2), tmp_path / "run", progress=False)
    # "Trained without it": the same student with every weight moved (the exporter folds identical initializers
    # together, so an untouched fresh model, whose LayerNorms are all ones, would export a different graph).
    plain = build_student("conformer_ctc", STUDENT, vocab=load_student(final).vocab)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_student(plain, tmp_path / "plain")
    cfg = ExportConfig(quantize=())
    export_student(final, tmp_path / "onnx_trained", cfg)
    export_student(tmp_path / "plain", tmp_path / "onnx_plain", cfg)
    a, b = (onnx.load(str(tmp_path / d / "model.onnx")) for d in ("onnx_trained", "onnx_plain"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert sorted((i.name, tuple(i.dims)) for i in a.graph.initializer) == \
        sorted((i.name, tuple(i.dims)) for i in b.graph.initializer)
    sizes = [(tmp_path / d / "model.onnx").stat().st_size for d in ("onnx_trained", "onnx_plain")]
    assert abs(sizes[0] - sizes[1]) < 1024


def test_resume_restores_the_method_modules_exactly(setup, tmp_path, monkeypatch):
    from speechkd.tasks.layerwise import LayerwiseTask

    run = _run(setup)
    train(run, tmp_path / "straight", progress=False)
    original, calls = LayerwiseTask.loss, {"n": 0}

    def crash_on_fourth(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(LayerwiseTask, "loss", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        train(run, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(LayerwiseTask, "loss", original)
    train(run, tmp_path / "resumed", progress=False)
    for name in ("model.safetensors", "task_modules.safetensors"):
        a, b = (load_file(str(tmp_path / d / "checkpoints" / "step-0000004" / name)) for d in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_worker_processes_give_the_same_batches_and_resume_exactly(setup, tmp_path, monkeypatch):
    from speechkd.tasks.layerwise import LayerwiseTask

    seen = {}
    original = LayerwiseTask.loss

    def record(self, model, batch):
        seen.setdefault(self._tag, []).append(list(batch["ids"]))
        return original(self, model, batch)

    monkeypatch.setattr(LayerwiseTask, "loss", record)
    for workers in (0, 2):
        monkeypatch.setattr(LayerwiseTask, "_tag", workers, raising=False)
        train(_run(setup, num_workers=workers), tmp_path / f"w{workers}", progress=False)
    assert seen[0] == seen[2] and len(seen[0]) == 4


def test_online_teacher_targets_match_the_store(setup, tmp_path):
    from speechkd.students import build_student
    from speechkd.tasks.layerwise import build
    from speechkd.vocab import build_vocabulary

    student = build_student("conformer_ctc", STUDENT, vocab=build_vocabulary(["abc"]))
    stored = build(_run(setup), tmp_path / "a", student)
    online = build(_run(setup, method={"targets": ""}), tmp_path / "b", student)
    a, b = stored.collate([0, 3]), online.collate([0, 3])
    assert a["ids"] == b["ids"]
    for layer in (1, 2):  # the store keeps fp16
        torch.testing.assert_close(a["targets"][layer], b["targets"][layer], atol=2e-2, rtol=2e-2)


def test_bad_inputs_are_refused_before_training(setup, tmp_path):
    teacher, audio, store = setup
    with pytest.raises(TrainingError, match="not in the target store"):
        train(_run(setup, method={"teacher_layers": [0]}), tmp_path / "a", progress=False)
    other = RunConfig(**{**_run(setup).__dict__, "teacher": "facebook/hubert-base-ls960"})
    with pytest.raises(Exception, match="teacher: store has"):
        train(other, tmp_path / "b", progress=False)
    with pytest.raises(TrainingError, match="no transcriber"):
        train(RunConfig(**{**_run(setup).__dict__, "dev": str(audio)}), tmp_path / "c", progress=False)
    with pytest.raises(Exception, match="fp16 needs a GPU"):
        train(_run(setup, precision="fp16"), tmp_path / "d", progress=False)
    with pytest.raises(Exception, match="no CUDA GPU|cuda"):
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")  # pragma: no cover
        train(_run(setup, device="cuda"), tmp_path / "e", progress=False)


def test_items_missing_from_the_store_go_to_the_skip_list(setup, tmp_path):
    teacher, audio, store = setup
    extra = tmp_path / "audio"
    extra.mkdir()
    for f in audio.iterdir():
        (extra / f.name).write_bytes(f.read_bytes())
    sf.write(extra / "new.wav", _wave(1.0, 9), SR)
    run = RunConfig(**{**_run(setup, max_steps=1).__dict__, "labels": str(extra)})
    train(run, tmp_path / "run", progress=False)
    skipped = [json.loads(x) for x in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["new"] and "not in the target store" in skipped[0]["reason"]


def test_bf16_autocast_trains_on_cpu(setup, tmp_path):
    train(_run(setup, max_steps=2, precision="bf16"), tmp_path / "bf16", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)
