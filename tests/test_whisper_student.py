"""Distil-Whisper students: layer selection, weight copying, save/reload, errors, speculative decoding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from speechkd.config import ConfigError
from speechkd.students import StudentError, build_student, load_student, save_student, student_recognizer
from speechkd.students.whisper import (
    SpeculativeRecognizer,
    _student_generation_config,
    compare_speculative,
    create_student,
    select_layers,
    teacher_from_model,
)
from speechkd.teachers import load_whisper
from speechkd_runtime.guards import RAW_GREEDY

SIX_LAYER_HEADS = [[2, 0], [5, 1], [3, 2]]


@pytest.fixture(scope="module")
def six_layer_dir(tiny_whisper_dir, tmp_path_factory):
    """The tiny random Whisper widened to 6 encoder + 6 decoder layers (same tokenizer)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    cfg = copy.deepcopy(base.config)
    cfg.encoder_layers = cfg.decoder_layers = cfg.num_hidden_layers = 6
    torch.manual_seed(1)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = copy.deepcopy(base.generation_config)
    model.generation_config.alignment_heads = SIX_LAYER_HEADS
    out = tmp_path_factory.mktemp("six_layer")
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(tiny_whisper_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def six_layer(six_layer_dir, teacher_cache):
    return load_whisper(six_layer_dir, cache_dir=teacher_cache)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_whisper_dir, teacher_cache):
    return load_whisper(tiny_whisper_dir, cache_dir=teacher_cache)


@pytest.fixture(scope="module")
def clips(synth_corpus):
    from speechkd.data import decode, open_data

    # The three shortest training clips: real speech, and quick to decode several times over.
    audios = sorted((decode(u) for u in open_data(str(synth_corpus / "train.jsonl"))), key=len)
    return audios[:3]


def test_select_layers_keeps_first_and_last_maximally_spaced():
    assert select_layers(6, 2) == [0, 5]
    assert select_layers(6, 3) == [0, 2, 5]
    assert select_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert select_layers(32, 2) == [0, 31]
    assert select_layers(6, 1) == [5]  # one layer: the one that feeds the final layer norm
    with pytest.raises(StudentError, match="only 6 decoder layers"):
        select_layers(6, 7)
    with pytest.raises(StudentError, match="at least 1"):
        select_layers(6, 0)


def test_create_student_copies_the_kept_layers_exactly(six_layer):
    student = create_student(six_layer, encoder_layers=3, decoder_layers=2)
    teacher = six_layer.model
    assert student.speechkd_layer_map == {"encoder": [0, 2, 5], "decoder": [0, 5]}
    assert (student.config.encoder_layers, student.config.decoder_layers) == (3, 2)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for stack, mapping in student.speechkd_layer_map.items():
        for s_idx, t_idx in enumerate(mapping):
            prefix_s, prefix_t = f"model.{stack}.layers.{s_idx}.", f"model.{stack}.layers.{t_idx}."
            keys = [k for k in s_sd if k.startswith(prefix_s)]
            assert keys
            for k in keys:
                assert torch.equal(s_sd[k], t_sd[prefix_t + k[len(prefix_s):]]), k
    # Everything outside the layers (conv front end, embeddings, final norms) is the teacher's.
    for k in s_sd:
        if ".layers." not in k:
            assert torch.equal(s_sd[k], t_sd[k]), k
    assert student.proj_out.weight.data_ptr() == student.model.decoder.embed_tokens.weight.data_ptr()
    # Alignment heads follow their layers: teacher layer 5 is student layer 1; layers 2 and 3 are gone.
    assert student.generation_config.alignment_heads == [[1, 1]]
    assert student.generation_config.max_length == teacher.generation_config.max_length
    assert student.speechkd_processor is six_layer.processor


def test_alignment_heads_dropped_when_no_kept_layer_has_one(caplog):
    from transformers import GenerationConfig

    gen = GenerationConfig(alignment_heads=[[2, 0], [3, 1]], max_length=40)
    with caplog.at_level("WARNING"):
        out = _student_generation_config(gen, [0, 5])
    assert out.alignment_heads is None and out.max_length == 40
    assert "no alignment heads" in caplog.text
    assert gen.alignment_heads == [[2, 0], [3, 1]]  # the teacher's config is untouched


def test_bad_layer_counts_fail_before_loading_weights(six_layer_dir, teacher_cache):
    teacher = load_whisper(six_layer_dir, cache_dir=teacher_cache)
    with pytest.raises(StudentError, match="decoder_layers=7 but the teacher has only 6"):
        create_student(teacher, decoder_layers=7)
    with pytest.raises(StudentError, match="encoder_layers=9"):
        create_student(teacher, encoder_layers=9)
    with pytest.raises(StudentError, match="at least 1 encoder layer"):
        create_student(teacher, encoder_layers=0)
    assert teacher._model is None  # the checks ran on the config alone
    with pytest.raises(ConfigError, match="decoder_layers=0"):
        build_student("whisper", {"teacher": str(six_layer_dir), "decoder_layers": 0})
    with pytest.raises(StudentError, match="teacher's tokenizer"):
        build_student("whisper", {"decoder_layers": 1}, teacher=teacher, vocab=["a", "b"])


def test_saved_student_reloads_with_identical_logits(tiny_teacher, tiny_whisper_dir, tmp_path):
    model = build_student("whisper", {"teacher": str(tiny_whisper_dir), "decoder_layers": 1}, teacher=tiny_teacher)
    out = save_student(model, tmp_path / "student")
    assert (out / "speechkd_student.json").is_file() and list(out.glob("*.safetensors"))
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    again = load_student(out)
    assert again.student_type == "whisper" and again.student_config.decoder_layers == 1
    torch.manual_seed(0)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.tensor([[257, 264, 40, 41], [257, 264, 7, 8]])
    with torch.no_grad():
        a = model(input_features=mel, decoder_input_ids=tokens).logits
        b = again(input_features=mel, decoder_input_ids=tokens).logits
    assert torch.equal(a, b)
    assert again.generation_config.alignment_heads == model.generation_config.alignment_heads


def test_init_from_checks_layers_and_vocabulary(six_layer, six_layer_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    first = build_student("whisper", {"teacher": str(six_layer_dir), "decoder_layers": 2}, teacher=six_layer)
    saved = save_student(first, tmp_path / "first")
    resumed = build_student("whisper", {"decoder_layers": 2, "init_from": str(saved)}, teacher=six_layer)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), resumed.parameters()))
    with pytest.raises(StudentError, match="decoder_layers: 2"):
        build_student("whisper", {"decoder_layers": 3, "init_from": str(saved)}, teacher=six_layer)
    # A student of a different vocabulary (another teacher's) cannot continue under this teacher.
    cfg = copy.deepcopy(first.config)
    cfg.vocab_size += 10
    other = WhisperForConditionalGeneration(cfg)
    other.save_pretrained(tmp_path / "other")
    six_layer.processor.save_pretrained(tmp_path / "other")
    with pytest.raises(StudentError, match="vocab_size"):
        build_student("whisper", {"decoder_layers": 2, "init_from": str(tmp_path / "other")}, teacher=six_layer)


def test_recognizer_decodes_like_the_teacher_and_restores_train_mode(tiny_teacher, clips, tmp_path):
    # A "student" keeping all layers is the teacher itself: its recogniser must decode the same ids.
    model = build_student("whisper", {"decoder_layers": 2}, teacher=tiny_teacher)
    model.train()
    rec = student_recognizer(model, batch_size=2)
    texts = rec.transcribe(clips)
    assert model.training  # restored after decoding
    assert texts == tiny_teacher.transcribe(clips, batch_size=2)
    assert rec.num_parameters() == sum(p.numel() for p in tiny_teacher.model.parameters())
    assert rec.size_bytes() > 0


def test_speculative_decoding_reproduces_teacher_greedy_ids(tiny_teacher, clips):
    student = create_student(tiny_teacher, decoder_layers=1)
    spec = SpeculativeRecognizer(tiny_teacher.model, student, tiny_teacher.processor)
    rng = np.random.default_rng(0)
    audios = list(clips[:2]) + [rng.standard_normal(16000).astype(np.float32) * 0.1]
    expected = tiny_teacher.generate_token_ids(audios, batch_size=1, guards=RAW_GREEDY)
    assert spec.generate_token_ids(audios) == expected
    assert any(len(ids) > 3 for ids in expected)  # real sequences were compared, not empty ones
    report = compare_speculative(tiny_teacher, student, clips[:1])
    assert report["identical"] == report["num_clips"] == 1 and report["mismatches"] == []
    assert report["teacher_seconds"] > 0 and report["speculative_seconds"] > 0


def test_speculative_drafts_come_from_a_consistent_assistant_cache(tiny_teacher, clips):
    """An assistant identical to the teacher drafts exactly the teacher's tokens, so every draft is accepted and the
    teacher's decoder runs far fewer times than there are tokens. Without a decoder attention mask the assistant
    re-fed its whole prefix on top of its cache each round: garbage drafts (transformers <= 5.24) or a cache that
    outgrew the positional table (5.25: IndexError)."""
    twin = create_student(tiny_teacher, decoder_layers=tiny_teacher.model.config.decoder_layers)
    spec = SpeculativeRecognizer(tiny_teacher.model, twin, tiny_teacher.processor)
    calls = []
    hook = tiny_teacher.model.model.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        ids = spec.generate_token_ids(list(clips[:1]))[0]
    finally:
        hook.remove()
    assert ids == tiny_teacher.generate_token_ids(list(clips[:1]), batch_size=1, guards=RAW_GREEDY)[0]
    assert len(ids) >= 8, "the clip must decode to enough tokens for drafting to matter"
    assert len(calls) <= len(ids) // 2, f"teacher decoder ran {len(calls)} times for {len(ids)} tokens"


def test_speculative_refuses_a_different_tokenizer(tiny_teacher):
    from transformers import WhisperForConditionalGeneration

    cfg = copy.deepcopy(tiny_teacher.model.config)
    cfg.vocab_size += 1
    with pytest.raises(StudentError, match="share its teacher's tokenizer"):
        SpeculativeRecognizer(tiny_teacher.model, WhisperForConditionalGeneration(cfg), tiny_teacher.processor)


def test_cli_student_create(tiny_whisper_dir, other_tiny_whisper_dir, tmp_path, capsys, monkeypatch, teacher_cache):
    from speechkd.cli import main

    monkeypatch.setenv("SPEECHKD_CACHE", str(teacher_cache))
    assert main(["student", "create", "--teacher", str(tiny_whisper_dir), "--decoder-layers", "1",
                 "--encoder-layers", "1", "--out", str(tmp_path / "s")]) == 0
    assert "decoder layers [1]" in capsys.readouterr().out
    model = load_student(tmp_path / "s")
    assert (model.config.encoder_layers, model.config.decoder_layers) == (1, 1)
    # --pretrained: a smaller Whisper as the student, all of its layers unless asked otherwise.
    assert main(["student", "create", "--teacher", str(tiny_whisper_dir), "--pretrained",
                 str(other_tiny_whisper_dir), "--out", str(tmp_path / "p")]) == 0
    assert "pretrained" in capsys.readouterr().out
    model = load_student(tmp_path / "p")
    assert (model.config.d_model, model.config.decoder_layers) == (32, 2)
    # 0 decoder layers is refused, not replaced by the default: one line naming the field, exit code 2.
    assert main(["student", "create", "--teacher", str(tiny_whisper_dir), "--decoder-layers", "0",
                 "--out", str(tmp_path / "z")]) == 2
    assert "at least 1 decoder" in capsys.readouterr().err


def test_student_config_refuses_both_init_from_and_pretrained(tiny_whisper_dir, other_tiny_whisper_dir):
    with pytest.raises(ConfigError, match="not both"):
        build_student("whisper", {"init_from": str(tiny_whisper_dir), "pretrained": str(other_tiny_whisper_dir)})
    with pytest.raises(ConfigError, match="at least 1 decoder"):
        build_student("whisper", {"pretrained": str(other_tiny_whisper_dir), "decoder_layers": 0})


def test_real_tiny_en_student_and_speculative_decoding(tiny_en, clips):
    """Slow-ish (~20 s alone, more on a busy machine): a 2-decoder-layer student of tiny.en speaks, and as
    the assistant in speculative decoding it leaves tiny.en's greedy transcripts unchanged."""
    student = create_student(tiny_en, decoder_layers=2)
    assert student.speechkd_layer_map["decoder"] == [0, 3]
    # Untrained, it rambles to the length limit: 16 tokens are enough to see that it produces text.
    texts = teacher_from_model(student, tiny_en.processor).transcribe(clips[:1], max_new_tokens=16)
    assert isinstance(texts[0], str) and texts[0].strip()
    spec = SpeculativeRecognizer(tiny_en.model, student, tiny_en.processor)
    assert spec.transcribe(clips) == tiny_en.transcribe(clips, batch_size=len(clips))

