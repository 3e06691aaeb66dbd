"""CTC students: every family builds, keeps the export contract, saves/reloads bit-identically, decodes,
evaluates like a teacher, learns; the ctc task skips what it cannot train on, with reasons."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkd.students import StudentError, build_student, load_student, save_student, student_recognizer
from speechkd.students.ctc import CTCRecognizer
from speechkd.vocab import build_vocabulary
from speechkd_runtime.ctc import greedy_ids
from speechkd_runtime.features import compute_features, num_input_frames, pad_batch

TINY = {
    "conformer_ctc": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 7,
                      "subsampling_channels": 8},
    "transformer_ctc": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "subsampling_channels": 8,
                        "pos_encoding": "sinusoidal"},
    "wav2vec2_ctc": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                     "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
    "hubert_ctc": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                   "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
}


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(["the quick brown fox jumps over the lazy dog", "it's 42"])


def _audios(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9040)]


def _run(model, audios):
    feats = [compute_features(model.frontend, a) for a in audios]
    x, lens = pad_batch(feats)
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(lens)), lens


def _check_contract_and_round_trip(model, tmp_path: Path) -> None:
    model.eval()
    audios = _audios()
    (log_probs, out_lens), in_lens = _run(model, audios)
    assert log_probs.dtype == torch.float32 and out_lens.dtype == torch.int64
    assert log_probs.shape[0] == 2 and log_probs.shape[2] == len(model.vocab)
    assert int(out_lens.max()) == log_probs.shape[1]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-4)
    assert out_lens.tolist() == model.output_lengths(torch.from_numpy(in_lens)).tolist()
    for n_in, n_out in zip(in_lens, out_lens.tolist()):
        assert abs(n_out - n_in / model.subsampling_factor) <= 2  # the subsampling factor is what it says
    assert [model.num_output_frames(len(a)) for a in audios] == out_lens.tolist()
    # A padded batch computes what each utterance computes alone.
    (single, single_len), _ = _run(model, audios[1:])
    assert single_len.tolist() == out_lens[1:].tolist()
    torch.testing.assert_close(log_probs[1, : out_lens[1]], single[0], atol=1e-4, rtol=1e-4)

    out = save_student(model, tmp_path / "student")
    for name in ("model.safetensors", "config.json", "tokens.txt", "speechkd_student.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ctc" and config["student_type"] == model.student_type
    assert config["vocab_size"] == len(model.vocab) and config["blank_id"] == 0
    assert config["frontend"] == model.frontend and config["subsampling_factor"] == model.subsampling_factor
    assert config["sample_rate"] == 16000
    again = load_student(out)
    assert again.student_type == model.student_type and again.vocab.tokens == model.vocab.tokens
    (log_probs2, out_lens2), _ = _run(again, audios)
    assert torch.equal(log_probs, log_probs2) and torch.equal(out_lens, out_lens2)


@pytest.mark.parametrize("student_type", sorted(TINY))
def test_student_contract_and_save_load(student_type, vocab, tmp_path):
    torch.manual_seed(0)
    model = build_student(student_type, TINY[student_type], vocab=vocab)
    _check_contract_and_round_trip(model, tmp_path)


def test_default_sizes_are_edge_sized(vocab):
    for student_type in ("conformer_ctc", "transformer_ctc", "wav2vec2_ctc"):
        n = sum(p.numel() for p in build_student(student_type, {}, vocab=vocab).parameters())
        assert 4e6 < n < 10e6, (student_type, n)


def test_missing_vocabulary_is_a_clear_error():
    with pytest.raises(StudentError, match="needs a vocabulary"):
        build_student("conformer_ctc", {})


def test_greedy_decoding_on_a_hand_made_matrix():
    # Frames' best labels: a a <b> a b b <b> | padding (after length 7) says c.
    # Callers pass one utterance's frames, cut to its valid length (CTCRecognizer.log_probs, CtcModel).
    best = [1, 1, 0, 1, 2, 2, 0, 3, 3]
    log_probs = torch.full((1, len(best), 4), -10.0)
    log_probs[0, torch.arange(len(best)), torch.tensor(best)] = -0.01
    lens = torch.tensor([7])
    assert greedy_ids(log_probs[0, : int(lens[0])].cpu().numpy(), 0).tolist() == [1, 1, 2]
    assert greedy_ids(log_probs[0].numpy(), 0).tolist() == [1, 1, 2, 3]
    blanks = np.log(np.full((3, 4), 0.01))
    blanks[:, 0] = 0.0
    assert greedy_ids(blanks, 0).tolist() == [] and greedy_ids(np.zeros((0, 4)), 0).tolist() == []


def test_whisper_encoder_ctc_starts_from_the_teacher(tiny_whisper_dir, vocab, tmp_path):
    from transformers import WhisperForConditionalGeneration

    teacher = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    enc = teacher.get_encoder()
    student = build_student("whisper_encoder_ctc", {"teacher": str(tiny_whisper_dir), "num_layers": 1},
                            teacher=teacher, vocab=vocab)
    assert len(student.encoder.layers) == 1 and student.frontend["kind"] == "whisper_mel"
    teacher_state = enc.state_dict()
    for key, value in student.encoder.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key  # conv front end, positions, layer 0, final norm
    _check_contract_and_round_trip(student, tmp_path)  # reload rebuilds the architecture without the teacher

    # With every layer kept and a 30-s input, the student's encoder is the teacher's encoder.
    full = build_student("whisper_encoder_ctc", {"teacher": str(tiny_whisper_dir), "num_layers": 2},
                         teacher=teacher, vocab=vocab).eval()
    feats = torch.from_numpy(compute_features({**full.frontend, "pad_to_seconds": 30}, _audios()[0]))[None]
    with torch.no_grad():
        ours = full.encode(feats, torch.tensor([feats.shape[1]]), layers=[-1])
        ref = enc(feats.transpose(1, 2)).last_hidden_state
    assert ours.lengths.tolist() == [1500]
    torch.testing.assert_close(ours.hidden[2], ref, atol=1e-4, rtol=1e-4)

    with pytest.raises(StudentError, match="num_layers 3"):
        build_student("whisper_encoder_ctc", {"teacher": "x", "num_layers": 3}, teacher=teacher, vocab=vocab)


def test_whisper_encoder_ctc_loads_its_teacher_from_the_spec(tiny_whisper_dir, vocab):
    student = build_student("whisper_encoder_ctc", {"teacher": str(tiny_whisper_dir), "num_layers": 2}, vocab=vocab)
    assert student.max_input_seconds == 30.0
    # Longer audio than 30 s is transcribed in pieces rather than failing on the positional table.
    texts = CTCRecognizer(student).transcribe([np.zeros(16000 * 31, np.float32), np.zeros(400, np.float32)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# --------------------------------------------------------------------------------------------- with data


def _labels(synth_corpus: Path, out: Path, split: str = "train", n: int | None = None) -> tuple[Path, list[dict]]:
    """The corpus manifest as labels records (absolute audio paths); n: the n shortest utterances."""
    records = [json.loads(line) for line in (synth_corpus / f"{split}.jsonl").read_text().splitlines()]
    if n is not None:
        records = sorted(records, key=lambda r: r["duration"])[:n]
    records = [{"id": r["id"], "audio": str(synth_corpus / r["audio"]), "text": r["text"],
                "duration": r["duration"]} for r in records]
    path = out / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def _run_config(labels: Path, method_config: dict | None = None):
    return SimpleNamespace(labels=str(labels), method_config=method_config or {}, train=SimpleNamespace(seed=0))


def test_recognizer_runs_through_evaluate(synth_corpus, tmp_path):
    from speechkd.data import open_data
    from speechkd.evaluate import evaluate
    from speechkd.tasks import ctc
    from speechkd.train import dev_scores

    labels, records = _labels(synth_corpus, tmp_path)
    run = _run_config(labels)
    model = build_student("conformer_ctc", TINY["conformer_ctc"], vocab=ctc.make_vocab(run, records))
    saved = save_student(model, tmp_path / "student")
    dev = open_data(synth_corpus / "dev.jsonl", require_text=True)
    result = evaluate(student_recognizer(saved), dev, batch_size=3, out_dir=tmp_path / "eval")
    assert result["num_utterances"] == len(dev) and result["wer"] >= 0
    assert result["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert result["size_bytes"] == (saved / "model.safetensors").stat().st_size
    # The training loop's dev WER (the task's transcripts, scored by the loop) is the same number.
    model.train()
    task = ctc.build(run, tmp_path / "run", model)
    metrics = dev_scores(task, model, dev)
    assert metrics["dev_wer"] == pytest.approx(result["wer"]) and model.training


def test_a_tiny_student_overfits_a_fixed_batch(synth_corpus, tmp_path):
    from speechkd.tasks import ctc

    labels, records = _labels(synth_corpus, tmp_path, n=2)
    run = _run_config(labels, {"spec_augment": {"num_time_masks": 0, "num_freq_masks": 0}})
    torch.manual_seed(0)
    cfg = {**TINY["conformer_ctc"], "d_model": 64, "ffn_dim": 128, "dropout": 0.0}
    model = build_student("conformer_ctc", cfg, vocab=ctc.make_vocab(run, records))
    task = ctc.build(run, tmp_path / "run", model)
    batch = task.collate([0, 1])
    assert batch["ids"] == [r["id"] for r in records]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared machine
    try:
        for _ in range(40):
            loss, logs = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(logs["ctc"])
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0], losses


def test_task_skips_what_it_cannot_train_on(synth_corpus, tmp_path):
    from speechkd.tasks import ctc

    labels, records = _labels(synth_corpus, tmp_path, n=2)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(4800, np.float32), 16000)  # 0.3 s: 30 fbank frames, 6 conformer output frames
    long_label = "a much longer label than three tenths of a second can carry"
    records += [
        {"id": "too-short", "audio": str(short), "text": long_label, "duration": 0.3},
        {"id": "no-text", "audio": str(short), "text": "?!", "duration": 0.3},
        {"id": "lying-duration", "audio": str(short), "text": long_label, "duration": 6.0},
        {"id": "missing-file", "audio": str(tmp_path / "nope.wav"), "text": "hello", "duration": 1.0},
        {"id": "oov", "audio": records[0]["audio"], "text": records[0]["text"] + " über", "duration": records[0]["duration"]},
    ]
    labels.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = _run_config(labels, {"speed_perturb": [0.9, 1.1]})
    model = build_student("conformer_ctc", TINY["conformer_ctc"], vocab=ctc.make_vocab(run, records[:2]))
    task = ctc.build(run, tmp_path / "run", model)
    ids = [it.id for it in task.items]
    assert "too-short" not in ids and "no-text" not in ids and "oov" in ids
    report = json.loads((tmp_path / "run" / "ctc_labels.json").read_text())
    assert report["skipped"] == {"too short for label": 1, "empty label": 1}
    assert report["out_of_vocabulary"]["dropped_chars"].get("ü") == 1

    # Found only when the audio is read: the batch shrinks, and a batch of nothing usable is None.
    batch = task.collate([ids.index(i) for i in (records[0]["id"], "lying-duration", "missing-file")])
    assert batch["ids"] == [records[0]["id"]]
    assert task.collate([ids.index("lying-duration")]) is None
    skipped = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "run" / "skipped.jsonl").read_text().splitlines())}
    assert set(skipped) == {"too-short", "no-text", "lying-duration", "missing-file"}
    assert "too short for its label under CTC" in skipped["too-short"] and "gives 6" in skipped["too-short"]

    # Augmentation is a pure function of the indices (exact resume), and speed perturbation changes lengths.
    a, b = task.collate([0, 1]), task.collate([0, 1])
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["targets"], b["targets"])
    plain = [num_input_frames(model.frontend, round(r["duration"] * 16000)) for r in records[:2]]
    assert a["x_lens"].tolist() != plain
    json.dumps(task.fingerprint())
