"""Every CTC student exposes its layers like an encoder teacher; the CTC output is a head on the last one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechkd.students import StudentError, build_student
from speechkd.vocab import build_vocabulary
from speechkd_runtime.features import compute_features, pad_batch

SR = 16_000
TINY = {
    "conformer_ctc": {"d_model": 32, "num_layers": 3, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 7,
                      "subsampling_channels": 8},
    "transformer_ctc": {"d_model": 32, "num_layers": 3, "num_heads": 2, "ffn_dim": 64, "subsampling_channels": 8},
    "wav2vec2_ctc": {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64,
                     "conv_dim": (8,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2},
    "hubert_ctc": {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64,
                   "conv_dim": (8,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2},
}
RATES = {"conformer_ctc": 25.0, "transformer_ctc": 25.0, "wav2vec2_ctc": 50.0, "hubert_ctc": 50.0,
         "whisper_encoder_ctc": 50.0}


def _student(kind: str, tiny_whisper=None):
    vocab = build_vocabulary(["hello world", "the cat sat"])
    torch.manual_seed(0)
    if kind == "whisper_encoder_ctc":
        return build_student(kind, {"teacher": "x", "num_layers": 2, "dropout": 0.0}, teacher=tiny_whisper,
                             vocab=vocab).eval()
    return build_student(kind, {**TINY[kind], "dropout": 0.0}, vocab=vocab).eval()


def _batch(model, seconds=(1.0, 0.6)):
    rng = np.random.default_rng(0)
    feats = [compute_features(model.frontend, (0.1 * rng.standard_normal(int(s * SR))).astype(np.float32))
             for s in seconds]
    return pad_batch(feats)


@pytest.fixture(scope="module")
def tiny_whisper():
    from test_encoders import _tiny_whisper

    return _tiny_whisper()


@pytest.mark.parametrize("kind", [*TINY, "whisper_encoder_ctc"])
def test_layers_lengths_frame_rate_and_the_head_on_the_last_layer(kind, tiny_whisper):
    model = _student(kind, tiny_whisper)
    x, x_lens = (torch.as_tensor(a) for a in _batch(model))
    out = model.encode(x, x_lens, layers=[0, 1, -1])
    L = model.num_layers
    assert sorted(out.hidden) == [0, 1, L] and model.frame_rate_hz == RATES[kind] == out.frame_rate_hz
    log_probs, lens = model(x, x_lens)
    assert torch.equal(out.lengths, lens)
    for h in out.hidden.values():
        assert h.shape == (2, log_probs.shape[1], model.hidden_size)
        assert not h[1, int(lens[1]):].any()  # padded frames are zero
    # forward() is the CTC head on layer L
    head = model.hf.lm_head if hasattr(model, "hf") else model.head
    last = out.hidden[L]
    torch.testing.assert_close(head(last)[0].float().log_softmax(-1), log_probs[0], atol=1e-5, rtol=1e-5)
    # gradients flow into the student through a layer target
    out.hidden[1].pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_layer_names_the_range():
    model = _student("conformer_ctc")
    x, x_lens = (torch.as_tensor(a) for a in _batch(model))
    with pytest.raises(StudentError, match=r"valid indices are 0\.\.3"):
        model.encode(x, x_lens, layers=[4])
