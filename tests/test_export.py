"""ONNX export of CTC students: graphs faithful to PyTorch with dynamic axes, int8 variants, metadata, verification."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from speechkd.onnx_export import ExportConfig, ExportError, export_ctc, export_student
from speechkd.onnx_export.common import max_abs_diff
from speechkd.onnx_export.verify import VerifyError, verify
from speechkd.students import build_student, save_student
from speechkd.vocab import Vocabulary

VOCAB = ["<blk>", "▁", *"abcdefghijklmnopqrstuvwxyz'"]
TINY = {
    "conformer_ctc": {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 7,
                      "subsampling_channels": 8, "dropout": 0.0},
    "wav2vec2_ctc": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                     "conv_dim": [16, 16, 16, 16], "conv_kernel": [10, 8, 4, 4], "conv_stride": [5, 8, 4, 2],
                     "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "dropout": 0.0},
    "whisper_encoder_ctc": {"num_layers": 1, "dropout": 0.0},
}


def make_student(kind: str, out, tiny_whisper_dir=None, head_scale: float = 10.0):
    """A tiny random student, saved; its CTC head is scaled up so it emits varied, confident tokens."""
    torch.manual_seed(0)
    cfg = dict(TINY[kind])
    teacher = None
    if kind == "whisper_encoder_ctc":
        from transformers import WhisperForConditionalGeneration

        cfg["teacher"] = str(tiny_whisper_dir)
        teacher = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    model = build_student(kind, cfg, teacher=teacher, vocab=Vocabulary(VOCAB)).eval()
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(VOCAB)]
    with torch.no_grad():
        heads[-1].weight.mul_(head_scale)
    save_student(model, out)
    return model


def corpus_features(frontend, corpus, n=3):
    from speechkd.data import decode, read_manifest
    from speechkd_runtime.features import compute_features

    utts = read_manifest(corpus / "dev.jsonl")[:n]
    return [compute_features(frontend, decode(u)) for u in utts]


@pytest.fixture(scope="module", params=sorted(TINY))
def exported(request, tmp_path_factory, synth_corpus, tiny_whisper_dir):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    model = make_student(kind, root / "student", tiny_whisper_dir)
    cfg = ExportConfig(quantize=("dynamic", "static"), calibration=str(synth_corpus / "train.jsonl"),
                       calibration_size=4)
    config = export_ctc(root / "student", root / "onnx", cfg)
    return kind, model, root, config


def test_export_writes_graphs_metadata_config_and_tokens(exported):
    kind, model, root, config = exported
    out = root / "onnx"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.int8.onnx", "model.int8-static.onnx",
                                               "tokens.txt", "config.json"}
    saved = json.loads((out / "config.json").read_text())
    assert saved == json.loads(json.dumps(config))
    assert saved["model_type"] == "ctc" and saved["student_type"] == kind
    assert saved["vocab_size"] == len(VOCAB) and saved["blank_id"] == 0
    assert saved["frontend"] == model.frontend and saved["sample_rate"] == 16000
    assert saved["subsampling_factor"] == model.subsampling_factor
    assert saved["onnx"] == {"fp32": "model.onnx", "int8-dynamic": "model.int8.onnx",
                             "int8-static": "model.int8-static.onnx"}
    assert saved["default_model"] == "model.onnx"  # int8 becomes the default only after it passes verification
    assert saved["sherpa_onnx"]["compatible"] == (model.frontend["kind"] == "fbank")
    lines = (out / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "<blk> 0" and lines[1] == "▁ 1" and len(lines) == len(VOCAB)
    for name in ("model.onnx", "model.int8.onnx", "model.int8-static.onnx"):
        proto = onnx.load(str(out / name))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["model_type"] == "ctc" and meta["vocab_size"] == str(len(VOCAB)) and meta["blank_id"] == "0"
        assert meta["sample_rate"] == "16000" and meta["subsampling_factor"] == str(model.subsampling_factor)
        assert json.loads(meta["frontend"]) == model.frontend
        assert [i.name for i in proto.graph.input] == ["x", "x_lens"]
        assert [o.name for o in proto.graph.output] == ["log_probs", "log_probs_len"]
    # int8 files hold int8 weights and are smaller (tiny models are dominated by unquantised tables, e.g.
    # Whisper's positional embedding, so the saving here is far below the ~4x of real-size models)
    for name in ("model.int8.onnx", "model.int8-static.onnx"):
        proto = onnx.load(str(out / name))
        assert sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8) > 0
        assert (out / name).stat().st_size < (out / "model.onnx").stat().st_size


def test_onnx_matches_pytorch_on_a_batch_of_different_lengths(exported, synth_corpus):
    import onnxruntime as ort

    from speechkd_runtime.features import pad_batch

    kind, model, root, _ = exported
    feats = corpus_features(model.frontend, synth_corpus, n=3)
    assert len({len(f) for f in feats}) == 3  # three lengths in one batch exercise the masks and dynamic T
    x, lens = pad_batch(feats)
    with torch.inference_mode():
        lp, out_lens = model(torch.from_numpy(x), torch.from_numpy(lens))
    ref = [lp[i, : out_lens[i]].numpy() for i in range(3)]
    for name, tol in (("model.onnx", 1e-4), ("model.int8.onnx", None), ("model.int8-static.onnx", None)):
        sess = ort.InferenceSession(str(root / "onnx" / name), providers=["CPUExecutionProvider"])
        got, got_lens = sess.run(None, {"x": x, "x_lens": lens})
        assert got_lens.dtype == np.int64 and got_lens.tolist() == out_lens.tolist()
        assert got.shape == tuple(lp.shape)
        mine = [got[i, : got_lens[i]] for i in range(3)]
        if tol is not None:
            assert max_abs_diff(ref, mine) < tol
        else:  # int8: still log-probabilities of the same model
            assert np.allclose(np.exp(got).sum(-1), 1.0, atol=1e-3)
            agree = np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, mine)]))
            assert agree > 0.6
    # batch of one and batch of three give the same fp32 result for the shared utterance (masking is exact)
    sess = ort.InferenceSession(str(root / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    single, n1 = sess.run(None, {"x": feats[0][None], "x_lens": lens[:1]})
    assert max_abs_diff([single[0, : n1[0]]], [ref[0]]) < 1e-4


def test_verify_passes_on_a_good_export_and_writes_a_report(exported, synth_corpus):
    kind, _, root, _ = exported
    # Random weights make many frames near-ties, so int8 flips some argmaxes: the int8 criterion is loosened
    # here and its teeth are tested below with a corrupted model; the fp32 check keeps its strict default.
    report = verify(root / "onnx", str(synth_corpus / "dev.jsonl"), max_wer_increase=400.0, max_utterances=3)
    assert report["passed"] and report["num_utterances"] == 3
    fp32 = report["variants"]["fp32"]
    assert fp32["max_abs_logprob_diff"] < 1e-4 and fp32["wer_vs_pytorch"] == 0.0 and fp32["wer"] == report["pytorch"]["wer"]
    assert set(report["variants"]) == {"fp32", "int8-dynamic", "int8-static"}
    on_disk = json.loads((root / "onnx" / "verify.json").read_text())
    assert on_disk["passed"] and on_disk["variants"]["fp32"]["file"] == "model.onnx"


def _tamper(path):
    """Add noise to the largest weight of an ONNX file: the graph still runs but computes something else."""
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims) if t.data_type == onnx.TensorProto.FLOAT else 0)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w + np.random.default_rng(0).normal(0, 0.5, w.shape).astype(w.dtype), init.name))
    onnx.save(proto, str(path))


def test_verify_fails_nonzero_on_tampered_weights(exported, synth_corpus, tmp_path):
    from speechkd.cli import main

    kind, _, root, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(root / "onnx", broken)
    _tamper(broken / "model.onnx")
    with pytest.raises(VerifyError, match="fp32: max"):
        verify(broken, str(synth_corpus / "dev.jsonl"), max_utterances=2, max_wer_increase=400.0)
    assert json.loads((broken / "verify.json").read_text())["passed"] is False
    assert main(["verify", str(broken), "--data", str(synth_corpus / "dev.jsonl"), "--max-utterances", "2"]) == 1


def test_export_command_exits_nonzero_when_int8_fails_verification(tmp_path, synth_corpus, monkeypatch, capsys):
    """A quantised model that loses accuracy is reported, left out of the runtime's default, and the command fails."""
    import speechkd.onnx_export.quantize as quantize
    from speechkd.cli import main

    make_student("conformer_ctc", tmp_path / "student")
    real = quantize.quantize_model

    def bad_quantize(fp32, out, mode, **kw):
        real(fp32, out, mode, **kw)
        _tamper(out)  # stands in for a quantiser that wrecks accuracy

    monkeypatch.setattr(quantize, "quantize_model", bad_quantize)
    # Audio without references: int8 is then judged against PyTorch's own transcripts (a random model's WER
    # against real references is ~100% whatever int8 does, so that criterion could not catch the damage).
    from speechkd.data import read_manifest
    from speechkd.io import write_jsonl

    write_jsonl(tmp_path / "unlabelled.jsonl", [{"id": u.id, "audio": u.audio}
                                               for u in read_manifest(synth_corpus / "dev.jsonl")])
    assert main(["export", str(tmp_path / "student"), "--out", str(tmp_path / "onnx"),
                 "--quantize", "dynamic", "--data", str(tmp_path / "unlabelled.jsonl")]) == 1
    printed = capsys.readouterr()
    assert "failed verification" in printed.err and "int8-dynamic" in printed.out
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["default_model"] == "model.onnx" and config["verified"] is False


def test_export_command_verifies_and_picks_int8_default(tmp_path, synth_corpus, capsys):
    from speechkd.cli import main

    make_student("conformer_ctc", tmp_path / "student")
    assert main(["export", str(tmp_path / "student"), "--out", str(tmp_path / "onnx"),
                 "--data", str(synth_corpus / "dev.jsonl"), "--max-utterances", "3", "--max-wer-increase", "400"]) == 0
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["verified"] is True and config["default_model"] == "model.int8.onnx"


def test_missing_files_and_mismatched_config_are_refused(tmp_path):
    make_student("conformer_ctc", tmp_path / "student")
    for missing in ("model.safetensors", "tokens.txt", "speechkd_student.json"):
        d = tmp_path / f"no_{missing}"
        shutil.copytree(tmp_path / "student", d)
        (d / missing).unlink()
        with pytest.raises(ExportError, match=missing.replace(".", r"\.")):
            export_ctc(d, tmp_path / "out")
    d = tmp_path / "mismatch"
    shutil.copytree(tmp_path / "student", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["subsampling_factor"] = 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="subsampling_factor"):
        export_ctc(d, tmp_path / "out")
    with pytest.raises(ExportError, match="not a directory"):
        export_ctc(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ExportError, match="must differ"):
        export_student(tmp_path / "student", tmp_path / "student")


def test_export_config_validation():
    from speechkd.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="calibration"):
        from_dict(ExportConfig, {"quantize": ["static"]})
    with pytest.raises(ConfigError, match="unknown mode"):
        from_dict(ExportConfig, {"quantize": ["int4"]})
    assert from_dict(ExportConfig, {"quantize": []}).quantize == ()


def test_runtime_refuses_inconsistent_export_dirs(tmp_path):
    from speechkd_runtime.ctc import CtcModel, ModelDirError

    make_student("conformer_ctc", tmp_path / "student")
    d = tmp_path / "e"
    export_ctc(tmp_path / "student", d, ExportConfig(quantize=()))
    CtcModel(d)  # consistent: loads
    (d / "tokens.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(["<blk>", "a", "b"])), encoding="utf-8")
    with pytest.raises(ModelDirError, match="tokens.txt has 3 symbols"):
        CtcModel(d)
    (d / "tokens.txt").unlink()
    with pytest.raises(ModelDirError, match="tokens.txt is missing"):
        CtcModel(d)
    (d / "config.json").unlink()
    with pytest.raises(ModelDirError, match="no config.json"):
        CtcModel(d)


def test_weight_only_int8_shrinks_large_fp32_weights_and_keeps_outputs(exported, synth_corpus, tmp_path):
    """Conv kernels / position tables the quantiser leaves fp32 are stored int8 behind DequantizeLinear."""
    import onnxruntime as ort

    from speechkd.onnx_export.quantize import store_weights_int8

    kind, _, root, config = exported
    src = root / "onnx" / config["onnx"]["fp32"]
    path = tmp_path / "model.onnx"
    shutil.copy(src, path)
    big = {t.name: int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer
           if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 512 and len(t.dims) >= 2}
    floats = set(big)
    done = store_weights_int8(path, min_elements=512)  # tiny models: lower the size bar so every matrix counts
    assert set(done) == floats and floats
    assert path.stat().st_size < src.stat().st_size - 2.5 * sum(big.values())  # 4 bytes -> 1 (+ scales)
    graph = onnx.load(str(path)).graph
    assert not {t.name for t in graph.initializer} & floats
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) == len(floats)

    feats = corpus_features(config["frontend"], synth_corpus, n=2)
    runs = []
    for p in (src, path):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        runs.append([sess.run(None, {"x": f[None], "x_lens": np.array([len(f)])})[0][0] for f in feats])
    for a, b in zip(*runs):
        assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9
        assert np.abs(a - b).max() < 0.5 * np.abs(a).max()
