"""CTranslate2 -> transformers conversion: format reader, weight mapping, caching, and the parity proof."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from speechkd.teachers import TeacherLoadError, compare_with_faster_whisper, convert_ct2_to_transformers, load_whisper
from speechkd.teachers import ct2 as ct2_mod
from speechkd.teachers.ct2 import read_ct2_model

ROUND_TRIP_ATOL = 1e-4  # fp32 -> CT2 fp32 -> HF must reproduce the logits up to float rounding
INT8_LEVELS = 127  # symmetric int8 range used by ctranslate2
INT8_STEP_SLACK = 1.01  # float rounding on top of the half-step quantisation error
PARITY_UTTERANCES = 20
PARITY_MAX_WORDS = 12  # short clips keep the 20-utterance check inside the test time budget


def _to_ct2(hf_dir, out_dir, quantization=None):
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
        str(out_dir), quantization=quantization, force=True
    )
    return out_dir


def _logits(model_dir, features, decoder_ids):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return model(input_features=features, decoder_input_ids=decoder_ids).logits


@pytest.fixture(scope="module")
def round_trip(tiny_whisper_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("round_trip")
    ct2_dir = _to_ct2(tiny_whisper_dir, base / "ct2")
    hf_dir = convert_ct2_to_transformers(ct2_dir, base / "hf", cache_root=base / "cache")
    return ct2_dir, hf_dir


def _inputs(tiny_whisper_dir):
    from transformers import WhisperProcessor

    tok = WhisperProcessor.from_pretrained(tiny_whisper_dir).tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    ids = torch.tensor([prompt + tok("hello world").input_ids[2:-1]] * 2)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 80, 3000, generator=gen), ids


def test_round_trip_reproduces_logits(tiny_whisper_dir, round_trip):
    _, hf_dir = round_trip
    features, ids = _inputs(tiny_whisper_dir)
    original, converted = _logits(tiny_whisper_dir, features, ids), _logits(hf_dir, features, ids)
    assert converted.shape == original.shape
    diff = (converted - original).abs().max().item()
    assert diff < ROUND_TRIP_ATOL, f"round-trip logits differ by {diff}"


def test_round_trip_config_and_tokens(tiny_whisper_dir, round_trip):
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    _, hf_dir = round_trip
    a, b = WhisperConfig.from_pretrained(tiny_whisper_dir), WhisperConfig.from_pretrained(hf_dir)
    for key in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "num_mel_bins", "max_target_positions",
                "decoder_start_token_id", "eos_token_id", "tie_word_embeddings"):
        assert getattr(a, key) == getattr(b, key), key
    ga, gb = GenerationConfig.from_pretrained(tiny_whisper_dir), GenerationConfig.from_pretrained(hf_dir)
    for key in ("no_timestamps_token_id", "decoder_start_token_id", "is_multilingual", "task_to_id", "max_length"):
        assert getattr(ga, key) == getattr(gb, key), key
    assert gb.forced_decoder_ids is None
    tok = WhisperProcessor.from_pretrained(hf_dir).tokenizer
    assert len(tok) == b.vocab_size
    assert tok.decode(tok("a test").input_ids, skip_special_tokens=True) == "a test"


def test_reader_resolves_aliases_and_drops_key_bias(round_trip):
    ct2_dir, _ = round_trip
    model = read_ct2_model(ct2_dir / "model.bin")
    assert model.spec_name == "WhisperSpec"
    assert model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"  # tied output layer
    sd, shapes = ct2_mod.whisper_state_dict_from_ct2(model)
    assert shapes["tie_word_embeddings"] is True
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in sd
    assert "model.decoder.layers.1.encoder_attn.v_proj.bias" in sd
    assert torch.equal(sd["proj_out.weight"], sd["model.decoder.embed_tokens.weight"])


def test_int8_model_is_dequantised(tiny_whisper_dir, tmp_path):
    from safetensors.torch import load_file

    ct2_dir = _to_ct2(tiny_whisper_dir, tmp_path / "ct2_int8", quantization="int8")
    model = read_ct2_model(ct2_dir / "model.bin")
    assert model.variables["encoder/layer_0/ffn/linear_0/weight"].dtype == np.int8
    hf_dir = convert_ct2_to_transformers(ct2_dir, tmp_path / "hf", cache_root=tmp_path / "cache")
    original, converted = load_file(tiny_whisper_dir / "model.safetensors"), load_file(hf_dir / "model.safetensors")
    assert set(converted) <= set(original)
    for name, q in converted.items():
        w = original[name]
        if w.dim() < 2:  # biases and norms stay float
            assert torch.allclose(q, w, atol=1e-6), name
            continue
        # Symmetric per-row int8: each value is off by at most half a step, step = max|row| / 127.
        rows_w, rows_q = w.reshape(w.shape[0], -1), q.reshape(q.shape[0], -1)
        half_step = rows_w.abs().amax(dim=1, keepdim=True) / INT8_LEVELS / 2
        assert bool(((rows_q - rows_w).abs() <= half_step * INT8_STEP_SLACK + 1e-7).all()), name


def test_truncated_model_bin_is_a_load_error(round_trip, tmp_path):
    ct2_dir, _ = round_trip
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (ct2_dir / "model.bin").read_bytes()
    (broken / "model.bin").write_bytes(data[: len(data) // 2])
    (broken / "tokenizer.json").write_bytes((ct2_dir / "tokenizer.json").read_bytes())
    with pytest.raises(TeacherLoadError, match="not a readable CTranslate2 model.bin"):
        convert_ct2_to_transformers(broken, cache_root=tmp_path / "cache")


def test_ct2_dir_without_tokenizer_is_a_load_error(round_trip, tmp_path):
    ct2_dir, _ = round_trip
    bare = tmp_path / "bare"
    bare.mkdir()
    os.symlink(ct2_dir / "model.bin", bare / "model.bin")
    with pytest.raises(TeacherLoadError, match="copy_files tokenizer.json"):
        load_whisper(bare, cache_dir=tmp_path / "cache")


def test_cache_is_reused_and_partial_output_is_not_trusted(round_trip, tmp_path, monkeypatch):
    ct2_dir, _ = round_trip
    cache = tmp_path / "cache"
    target = ct2_mod.converted_dir_for(ct2_dir, cache_root=cache)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # what a killed, non-atomic conversion might leave
    out = convert_ct2_to_transformers(ct2_dir, cache_root=cache)
    assert out == target and ct2_mod.conversion_is_complete(out)
    marker = json.loads((out / ct2_mod.CONVERSION_MARKER).read_text())
    assert marker["source_sha256"].startswith(out.name)

    def fail(*args, **kwargs):
        raise AssertionError("a cached conversion was rebuilt")

    monkeypatch.setattr(ct2_mod, "_convert_into", fail)
    assert convert_ct2_to_transformers(ct2_dir, cache_root=cache) == out
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"


@pytest.mark.slow
def test_bundled_tiny_en_matches_faster_whisper(teacher_cache, tmp_path_factory):
    """Proof of conversion: the converted HF model transcribes exactly like faster-whisper."""
    import soundfile as sf

    from speechkd.io import read_jsonl
    from speechkd.synth import SynthConfig, synthesize_corpus

    corpus = synthesize_corpus(
        tmp_path_factory.mktemp("synth_parity"),
        SynthConfig(num_utterances=PARITY_UTTERANCES, seed=0, max_words=PARITY_MAX_WORDS),
        progress=False,
    )
    audios = [sf.read(corpus / row["file_name"], dtype="float32")[0] for row in read_jsonl(corpus / "metadata.jsonl")]
    assert len(audios) == PARITY_UTTERANCES
    teacher = load_whisper("bundled:tiny.en", cache_dir=teacher_cache)
    result = compare_with_faster_whisper(teacher, audios, language="en")
    assert result["n"] == PARITY_UTTERANCES
    assert result["n_equal"] == result["n"], json.dumps(result["mismatches"], indent=1, ensure_ascii=False)


@pytest.mark.slow
def test_bundled_base_converts_as_multilingual(teacher_cache):
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    from speechkd.teachers import resolve_bundled

    hf_dir = convert_ct2_to_transformers(resolve_bundled("bundled:base", cache_root=teacher_cache),
                                         cache_root=teacher_cache)
    config, gen = WhisperConfig.from_pretrained(hf_dir), GenerationConfig.from_pretrained(hf_dir)
    tok = WhisperProcessor.from_pretrained(hf_dir).tokenizer
    assert (config.vocab_size, config.d_model, config.encoder_layers, config.num_mel_bins) == (51865, 512, 6, 80)
    assert len(tok) == config.vocab_size
    assert gen.is_multilingual and gen.lang_to_id["<|en|>"] == tok.convert_tokens_to_ids("<|en|>")
    assert gen.task_to_id == {"transcribe": tok.convert_tokens_to_ids("<|transcribe|>"),
                              "translate": tok.convert_tokens_to_ids("<|translate|>")}
    assert gen.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>")
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    assert gen.decoder_start_token_id == config.decoder_start_token_id == sot
    assert gen.max_length == 448 and gen.forced_decoder_ids is None
