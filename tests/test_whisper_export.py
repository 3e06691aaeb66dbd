"""Whisper ONNX export + torch-free runtime, and the CTranslate2 (faster-whisper) export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from speechkd.onnx_export.whisper_onnx import ExportError, export_whisper, export_whisper_ct2
from speechkd.teachers import load_whisper
from speechkd_runtime import whisper as runtime
from speechkd_runtime.guards import RAW_GREEDY

ROOT = Path(__file__).resolve().parents[1]
# fp32 ONNX vs PyTorch on CPU: same math, different kernels. Observed max |diff| ~3e-5 on logits of
# magnitude ~10 (the random tiny model has init_std 0.3, so logits are far larger than a trained model's).
ENCODER_ATOL = 1e-4
LOGITS_ATOL = 1e-3


@pytest.fixture(scope="module")
def exported(tiny_whisper_dir, tmp_path_factory):
    return export_whisper(tiny_whisper_dir, tmp_path_factory.mktemp("onnx") / "tiny")


@pytest.fixture(scope="module")
def teacher(tiny_whisper_dir, teacher_cache):
    return load_whisper(tiny_whisper_dir, cache_dir=teacher_cache)


@pytest.fixture(scope="module")
def audios(synth_corpus):
    from speechkd.data import decode, open_data

    clips = [decode(u) for u in open_data(str(synth_corpus / "dev.jsonl"))]
    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(np.arange(24000) / 4.0) + 0.05 * rng.standard_normal(24000)).astype(np.float32)
    return clips + [tone]


def test_export_writes_config_tokens_and_both_variants(exported, teacher):
    cfg = json.loads((exported / "config.json").read_text())
    vocab = teacher.vocab
    assert cfg["model_type"] == "whisper" and cfg["n_mels"] == 80 and cfg["decoder_layers"] == 2
    assert cfg["prompt"] == [vocab["<|startoftranscript|>"], vocab["<|notimestamps|>"]]
    assert cfg["eot"] == vocab["<|endoftext|>"] and cfg["no_timestamps"] == vocab["<|notimestamps|>"]
    assert cfg["transcribe"] == vocab["<|transcribe|>"] and not cfg["is_multilingual"]
    assert cfg["max_new_tokens"] == 20  # half of the fixture's 40-token decoder context
    assert cfg["suppress_tokens"] == list(teacher.model.generation_config.suppress_tokens)
    for variant in ("fp32", "int8"):
        for name in cfg["files"][variant].values():
            assert (exported / name).is_file()
    tokens = json.loads((exported / "tokens.json").read_text())
    assert len(tokens) == cfg["vocab_size"] == teacher.model.config.vocab_size
    assert tokens[vocab["Ġ"]] == "Ġ" and tokens[cfg["eot"]] == "<|endoftext|>"
    assert not list(exported.parent.glob(".*.tmp"))  # the temporary build dir was renamed into place


def test_onnx_encoder_and_cached_decoder_match_pytorch(exported, teacher):
    model = teacher.model
    torch.manual_seed(1)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.tensor([[257, 264, 40, 41, 42], [257, 264, 50, 51, 52]])
    with torch.no_grad():
        ref_hidden = model.model.encoder(mel).last_hidden_state.numpy()
        ref_logits = model(input_features=mel, decoder_input_ids=tokens).logits.numpy()
    enc = ort.InferenceSession(str(exported / "encoder.onnx"))
    dec = ort.InferenceSession(str(exported / "decoder.onnx"))
    hidden, *cross = enc.run(None, {"mel": mel.numpy()})
    np.testing.assert_allclose(hidden, ref_hidden, atol=ENCODER_ATOL)
    # One key and one value input per decoder layer, keys already transposed: [B, heads, head_dim, frames].
    names = [o.name for o in enc.get_outputs()][1:]
    assert names == [i.name for i in dec.get_inputs()][3:] == ["cross_k_0", "cross_k_1", "cross_v_0", "cross_v_1"]
    heads = model.config.decoder_attention_heads
    assert cross[0].shape == (2, heads, 64 // heads, 1500) and cross[2].shape == (2, heads, 1500, 64 // heads)
    # Prompt + two tokens with an empty cache, then the rest one at a time from the cache.
    empty = np.zeros((2, 2, 0, 64), dtype=np.float32)
    feeds = {"self_k": empty, "self_v": empty, **dict(zip(names, cross))}
    logits, k, v = dec.run(None, {"tokens": tokens[:, :3].numpy(), **feeds})
    parts = [logits]
    for i in (3, 4):
        logits, k, v = dec.run(None, {"tokens": tokens[:, i:i + 1].numpy(), **feeds, "self_k": k, "self_v": v})
        parts.append(logits)
    assert k.shape == (2, 2, 5, 64)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), ref_logits, atol=LOGITS_ATOL)


def test_runtime_greedy_equals_transformers_greedy(exported, teacher, audios):
    model = runtime.WhisperModel(exported)
    feats = np.stack([model.features(a) for a in audios])
    np.testing.assert_allclose(feats, teacher.features(audios), atol=1e-4)
    expected = teacher.generate_token_ids(audios, batch_size=len(audios), guards=RAW_GREEDY)
    assert model.generate(feats, guards=RAW_GREEDY) == expected
    assert any(len(ids) > 3 for ids in expected)
    # Guarded (the default on both sides): the same fallback schedule, budgets and per-clip sampling seeds.
    assert model.transcribe(audios) == teacher.transcribe(audios)
    assert runtime.transcribe(exported, audios[0]) == teacher.transcribe(audios[:1])[0]


def test_int8_variant_runs(exported, audios):
    cfg = json.loads((exported / "config.json").read_text())
    for name in cfg["files"]["int8"].values():
        assert (exported / name).stat().st_size < (exported / name.replace(".int8", "")).stat().st_size
    model = runtime.WhisperModel(exported, variant="int8", num_threads=1)
    ids = model.generate(np.stack([model.features(a) for a in audios[:2]]))
    assert len(ids) == 2 and all(len(seq) <= cfg["max_new_tokens"] for seq in ids)
    assert all(0 <= i < cfg["vocab_size"] for seq in ids for i in seq)
    assert isinstance(runtime.transcribe(exported, audios[0], variant="int8"), str)
    # Per-row activation scales: int8 batches like fp32, and batch mates do not change a clip's transcript.
    assert model.batch_independent and model.default_batch_size == runtime.WhisperModel(exported).default_batch_size
    assert model.transcribe(audios[:3]) == [model.transcribe([a])[0] for a in audios[:3]]
    with pytest.raises(ValueError, match="no 'fp16' variant"):
        runtime.WhisperModel(exported, variant="fp16")


def test_int8_graphs_quantise_every_weight_matmul_per_row(exported):
    import onnx

    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["int8_activation_scales"] == "per_row"
    for role, name in cfg["files"]["int8"].items():
        graph = onnx.load(str(exported / name)).graph
        weights = {i.name for i in graph.initializer}
        ops = [n.op_type for n in graph.node]
        # No float MatMul on a weight is left, and no per-tensor dynamic quantisation is used.
        assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights], role
        assert "DynamicQuantizeLinear" not in ops and ops.count("MatMulInteger") > 0, role


def test_tied_embedding_is_stored_once(exported, teacher):
    import onnx
    from onnx import numpy_helper

    cfg = json.loads((exported / "config.json").read_text())
    vocab, d_model = cfg["vocab_size"], cfg["d_model"]
    for variant in ("fp32", "int8"):
        graph = onnx.load(str(exported / cfg["files"][variant]["decoder"])).graph
        tables = [i for i in graph.initializer if sorted(i.dims) == sorted([vocab, d_model])]
        assert len(tables) == 1, (variant, [t.name for t in tables])
        assert tables[0].data_type == (onnx.TensorProto.FLOAT if variant == "fp32" else onnx.TensorProto.INT8)
    # The lookup reads the projection's columns: the same numbers as the PyTorch embedding.
    graph = onnx.load(str(exported / cfg["files"]["fp32"]["decoder"])).graph
    table = numpy_helper.to_array(next(i for i in graph.initializer if sorted(i.dims) == sorted([vocab, d_model])))
    embedding = teacher.model.model.decoder.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(table.T if table.shape[0] == d_model else table, embedding)


def test_per_row_int8_matches_float_products_closely(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from speechkd.onnx_export.quantize import quantize_rows_int8

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    x = rng.standard_normal((2, 50, 64)).astype(np.float32)
    x[0, 3] *= 50.0  # one loud frame: a per-tensor scale would flatten every other row
    ids = np.array([0, 5, 31, 5], dtype=np.int64)
    # A tied embedding: the same weight's columns read by id (Gather axis 1), as the Whisper decoder does.
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
             helper.make_node("Gather", ["w", "ids"], ["cols"], name="lookup", axis=1)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 64]),
                               helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("cols", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    assert quantize_rows_int8(path) == ["proj"]
    saved = onnx.load(str(path)).graph
    assert [i.name for i in saved.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2] == []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level  # ENABLE_ALL fuses into MatMulIntegerToFloat
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        y, cols = session.run(None, {"x": x, "ids": ids})
        rel = np.abs(y - x @ w).max(axis=-1) / np.abs(x @ w).max(axis=-1)
        assert rel.max() < 0.03, level  # every row, the quiet ones included
        alone = session.run(None, {"x": x[1:], "ids": ids})[0]
        np.testing.assert_array_equal(alone, y[1:])  # a row's result does not depend on its batch mates
        # Each looked-up column is within half an int8 step of its own scale.
        np.testing.assert_allclose(cols, w[:, ids], rtol=0, atol=0.5 * np.abs(w).max() / 127 + 1e-6)


def test_bpe_decoding_without_a_tokenizer_library(exported, teacher):
    tokens = json.loads((exported / "tokens.json").read_text())
    text = "Héllo wörld, 3 € — naïve\ttab"
    ids = teacher.tokenizer.encode(text, add_special_tokens=False)
    eot = teacher.vocab["<|endoftext|>"]
    assert runtime.ids_to_text(ids + [eot, eot + 5], tokens, first_special_id=eot) == text
    assert runtime.ids_to_text(ids, tokens, eot) == teacher.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_long_audio_is_decoded_in_chunks_of_at_most_30_s(exported, monkeypatch):
    model = runtime.WhisperModel(exported)
    seen = []
    monkeypatch.setattr(model, "generate", lambda mel, language=None, **_: seen.append(mel.shape) or [[40]] * len(mel))
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16000 * 45)).astype(np.float32)
    audio[16000 * 25:16000 * 26] = 0.0  # a pause: the cut goes there
    texts = model.transcribe([audio], batch_size=1)
    assert [s[0] for s in seen] == [1, 1] and all(s[1:] == (80, 3000) for s in seen)
    assert texts == [" ".join([model.decode([40])] * 2)]


def test_runtime_imports_no_torch_or_transformers():
    code = ("import sys; sys.path.insert(0, 'export'); import speechkd_runtime.whisper; "
            "bad = [m for m in ('torch', 'transformers', 'speechkd') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_export_rejects_unknown_quantization(tiny_whisper_dir, tmp_path):
    with pytest.raises(ExportError, match="unknown mode"):
        export_whisper(tiny_whisper_dir, tmp_path / "x", quantize=("static",))
    with pytest.raises(ExportError, match="cannot export"):
        export_whisper(tmp_path / "missing", tmp_path / "y")


def test_ct2_export_runs_in_faster_whisper(tiny_whisper_dir, teacher, audios, tmp_path):
    import ctranslate2
    from faster_whisper import WhisperModel

    out = export_whisper_ct2(tiny_whisper_dir, tmp_path / "ct2", quantization="int8")
    assert (out / "model.bin").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80
    fw = WhisperModel(str(out), device="cpu", compute_type="int8", cpu_threads=1)
    segments, info = fw.transcribe(audios[0], language="en", beam_size=1, temperature=0.0,
                                   without_timestamps=True, condition_on_previous_text=False,
                                   max_new_tokens=20)  # faster-whisper assumes 448 positions; the fixture has 40
    assert isinstance(" ".join(s.text for s in segments), str) and info.duration > 0
    # A float32 conversion decodes the same greedy ids as transformers.
    exact = export_whisper_ct2(tiny_whisper_dir, tmp_path / "ct2_fp32", quantization="float32")
    ct2 = ctranslate2.models.Whisper(str(exact), device="cpu", compute_type="float32", intra_threads=1)
    feats = ctranslate2.StorageView.from_array(teacher.features(audios))
    prompt = teacher.prompt_ids(None)
    results = ct2.generate(feats, [prompt] * len(audios), beam_size=1, max_length=40, return_scores=False,
                           suppress_blank=True, suppress_tokens=list(teacher.model.generation_config.suppress_tokens))
    got = [teacher.strip_prompt(r.sequences_ids[0], prompt) for r in results]
    assert got == teacher.generate_token_ids(audios, batch_size=len(audios), guards=RAW_GREEDY)


def test_verify_whisper_export_against_pytorch(exported, tiny_whisper_dir, synth_corpus, tmp_path):
    from speechkd.onnx_export.verify import VerifyError, verify

    data = str(synth_corpus / "dev.jsonl")
    assert json.loads((exported / "config.json").read_text())["source_student_dir"] == str(tiny_whisper_dir)
    # The random tiny model's transcripts are noise, so the int8 WER allowance is opened wide here: this
    # checks the fp32 log-prob comparison and the report, not int8 quality.
    report = verify(exported, data, max_utterances=3, max_wer_increase=1000.0, report_path=tmp_path / "v.json")
    assert report["passed"] and set(report["variants"]) == {"fp32", "int8"}
    fp32 = report["variants"]["fp32"]
    assert fp32["max_abs_logprob_diff"] < 1e-3 and fp32["frame_argmax_agreement"] == 1.0
    assert fp32["wer_vs_pytorch"] == 0.0  # same greedy transcripts as PyTorch
    assert json.loads((tmp_path / "v.json").read_text())["passed"]
    # An impossible tolerance fails fp32, names it, and still writes the report.
    with pytest.raises(VerifyError, match="fp32: max \\|log-prob difference\\|") as e:
        verify(exported, data, max_utterances=2, tolerance=0.0, max_wer_increase=1000.0,
               report_path=tmp_path / "bad.json")
    assert not e.value.report["passed"] and (tmp_path / "bad.json").is_file()


def test_export_with_data_verifies_whisper(tiny_whisper_dir, teacher_cache, synth_corpus, tmp_path, monkeypatch):
    from speechkd.onnx_export import ExportConfig, export_student
    from speechkd.onnx_export.verify import VerifyError
    from speechkd.students import build_student, save_student

    monkeypatch.setenv("SPEECHKD_CACHE", str(teacher_cache))
    student = save_student(build_student("whisper", {"teacher": str(tiny_whisper_dir), "decoder_layers": 1}),
                           tmp_path / "student")
    data = str(synth_corpus / "dev.jsonl")
    result = export_student(student, tmp_path / "ok", ExportConfig(data=data, max_utterances=2, max_wer_increase=1000.0))
    assert result["report"]["passed"] and (tmp_path / "ok" / "verify.json").is_file()
    with pytest.raises(VerifyError, match="fp32"):  # a failing export says so (the CLI exits 1)
        export_student(student, tmp_path / "bad", ExportConfig(data=data, max_utterances=2, tolerance=1e-12,
                                                                        max_wer_increase=1000.0))
