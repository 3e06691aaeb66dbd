"""Encoder teachers on tiny random HuBERT / wav2vec2 / WavLM / Whisper checkpoints, plus the real bundled Whisper.

Each tiny model is saved with ``save_pretrained`` and reloaded through ``load_encoder(dir)``, which is
the path a user with the Hub takes, so loading, dispatch and feature extraction are exercised for real.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: tests never touch the network

import numpy as np
import pytest
import torch

from speechkd.teachers.encoders import EncoderTeacher, load_encoder

SR = 16_000
# The real wav2vec2 conv stack (400-sample receptive field, 320-sample stride = 50 Hz) at 8 channels.
CONV = dict(conv_dim=(8,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **CONV)
W2V_KINDS = ["hubert", "wav2vec2", "wavlm"]


def _wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _conv_frames(n: int) -> int:
    for k, s in zip(CONV["conv_kernel"], CONV["conv_stride"]):
        n = (n - k) // s + 1
    return n


def _save_w2v(kind: str, norm: str, path) -> str:
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2Model, WavLMConfig, WavLMModel)

    cfg_cls, model_cls = {"hubert": (HubertConfig, HubertModel), "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
                          "wavlm": (WavLMConfig, WavLMModel)}[kind]
    torch.manual_seed(0)
    config = cfg_cls(**TINY, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    model_cls(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=norm == "layer").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def w2v_dirs(tmp_path_factory):
    """kind/norm -> saved dir; "group" is the base-model front end, "layer" the large-model one."""
    root = tmp_path_factory.mktemp("w2v")
    return {(k, n): _save_w2v(k, n, root / f"{k}-{n}") for k in W2V_KINDS for n in ("group", "layer")}


def _tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                           max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)  # max_source_positions stays 1500: the real 30-s input
    return WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from transformers import WhisperFeatureExtractor

    path = tmp_path_factory.mktemp("whisper") / "tiny"
    model = _tiny_whisper()
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return str(path), model


# -- wav2vec2 family ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("kind", W2V_KINDS)
def test_w2v_family_shapes_lengths_and_batch_invariance(w2v_dirs, kind, norm):
    teacher = load_encoder(w2v_dirs[kind, norm])
    assert isinstance(teacher, EncoderTeacher)
    assert (teacher.kind, teacher.num_layers, teacher.hidden_size, teacher.frame_rate_hz) == (kind, 2, 32, 50.0)
    assert teacher.min_samples == 400 and teacher.max_samples is None
    short, long = _wave(0.5, 1), _wave(1.23, 2)
    out = teacher.encode([short, long])
    n_short, n_long = _conv_frames(len(short)), _conv_frames(len(long))
    assert (n_short, n_long) == (24, 61)  # ~50 Hz: (n - 400) // 320 + 1
    assert out.lengths.tolist() == [n_short, n_long] and out.frame_rate_hz == 50.0
    assert sorted(out.hidden) == [0, 1, 2]
    for h in out.hidden.values():
        assert h.shape == (2, n_long, 32) and h.dtype == torch.float32
    assert out.mask.sum(1).tolist() == [n_short, n_long]
    # The padded item equals its unpadded run: by padding + masks for "layer", by length grouping for "group".
    alone = teacher.encode([short])
    for layer in out.hidden:
        assert torch.allclose(out.hidden[layer][0, :n_short], alone.hidden[layer][0], atol=1e-4)
        assert out.hidden[layer][0, n_short:].abs().max() == 0  # padding zeroed, not batch-dependent values
    assert torch.allclose(out.hidden[2][1], teacher.encode([long]).hidden[2][0], atol=1e-4)
    # Two items of equal length share a forward pass and still equal their own runs.
    twin = short[::-1].copy()
    mixed = teacher.encode([short, long, twin], layers=[2])
    assert torch.allclose(mixed.hidden[2][0, :n_short], alone.hidden[2][0], atol=1e-4)
    assert torch.allclose(mixed.hidden[2][2, :n_short], teacher.encode([twin]).hidden[2][0], atol=1e-4)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # WavLM under plain transformers
@pytest.mark.parametrize("kind", W2V_KINDS)
def test_w2v_family_layer_selection_matches_transformers(w2v_dirs, kind):
    from transformers import AutoFeatureExtractor, AutoModel

    path = w2v_dirs[kind, "layer"]
    teacher = load_encoder(path)
    audio = _wave(0.7, 3)
    out = teacher.encode([audio], layers=[0, -1])
    assert sorted(out.hidden) == [0, 2]  # -1 is reported as L
    model = AutoModel.from_pretrained(path).eval()
    inputs = AutoFeatureExtractor.from_pretrained(path)(audio, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True)
    assert torch.allclose(out.hidden[0], ref.hidden_states[0], atol=1e-5)
    assert torch.allclose(out.hidden[2], ref.last_hidden_state, atol=1e-5)  # L = final output, post-LayerNorm
    assert sorted(teacher.encode([audio], layers=1).hidden) == [1]


def test_bad_layer_index_names_valid_range(w2v_dirs):
    teacher = load_encoder(w2v_dirs["hubert", "group"])
    for bad in ([3], [-4], [True], ["1"]):
        with pytest.raises(ValueError, match=r"0\.\.2"):
            teacher.encode([_wave(0.5, 0)], layers=bad)


def test_bad_audio_is_rejected_with_reason(w2v_dirs):
    teacher = load_encoder(w2v_dirs["wav2vec2", "group"])
    with pytest.raises(ValueError, match="1-D mono"):
        teacher.encode([np.zeros((2, 8000), np.float32)])
    with pytest.raises(ValueError, match="int16"):
        teacher.encode([np.zeros(8000, np.int16)])
    with pytest.raises(ValueError, match="400 samples"):
        teacher.encode([np.zeros(399, np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        teacher.encode([np.full(8000, np.nan, np.float32)])
    with pytest.raises(ValueError, match="empty"):
        teacher.encode([])
    with pytest.raises(ValueError, match="list of waveforms"):
        teacher.encode(np.zeros(8000, np.float32))


def test_loaded_model_object_and_ctc_checkpoint(w2v_dirs, tmp_path):
    from transformers import AutoModel, HubertConfig, HubertForCTC

    path = w2v_dirs["hubert", "layer"]
    audio = _wave(0.6, 4)
    ref = load_encoder(path).encode([audio]).hidden[2]
    # An in-memory model: same targets, and the caller's model stays where it was.
    model = AutoModel.from_pretrained(path)
    assert torch.allclose(load_encoder(model).encode([audio]).hidden[2], ref, atol=1e-5)
    half = load_encoder(model, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert half.encode([audio]).hidden[2].dtype == torch.bfloat16
    # A fine-tuned *ForCTC checkpoint loads its encoder only.
    torch.manual_seed(0)
    ctc = HubertForCTC(HubertConfig(**TINY, vocab_size=10))
    ctc.save_pretrained(tmp_path / "ctc")
    teacher = load_encoder(tmp_path / "ctc")
    assert torch.allclose(teacher.encode([audio]).hidden[1], ctc.eval().hubert(
        torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states[1], atol=1e-5)


def test_checkpoint_missing_weights_is_an_error_not_a_random_teacher(w2v_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(w2v_dirs["wavlm", "group"], bad)
    weights = load_file(bad / "model.safetensors")
    weights = {k: v for k, v in weights.items() if "layers.1." not in k}
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="random"):
        load_encoder(bad)


def test_default_feature_extractor_follows_front_end(w2v_dirs, tmp_path):
    """Without preprocessor_config.json: normalise for LayerNorm front ends, not for GroupNorm ones (fairseq)."""
    import shutil

    for norm, expect in (("group", False), ("layer", True)):
        path = tmp_path / norm
        shutil.copytree(w2v_dirs["hubert", norm], path)
        (path / "preprocessor_config.json").unlink()
        teacher = load_encoder(path)
        assert teacher.feature_extractor.do_normalize is expect
        assert teacher.encode([_wave(0.5, 5)]).lengths.tolist() == [24]


def test_unknown_hub_id_offline_names_id_and_suggests_local_dir(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"'speechkd-test/no-such-teacher'.*local directory"):
        load_encoder("speechkd-test/no-such-teacher")
    with pytest.raises(FileNotFoundError, match="no such teacher directory"):
        load_encoder("./no/such/dir")


# -- Whisper --------------------------------------------------------------------------------------


def test_tiny_whisper_encoder_from_dir(whisper_dir):
    path, model = whisper_dir
    teacher = load_encoder(path)
    assert (teacher.kind, teacher.num_layers, teacher.hidden_size, teacher.frame_rate_hz) == ("whisper", 2, 32, 50.0)
    assert teacher.max_samples == 30 * SR
    short, long = _wave(1.0, 6), _wave(2.5, 7)
    out = teacher.encode([short, long], layers=[1, 2])
    assert sorted(out.hidden) == [1, 2]
    assert out.lengths.tolist() == [50, 125]  # ceil(samples / 320)
    assert out.hidden[2].shape == (2, 125, 32)
    # Every item is padded to 30 s as in training, so batching changes nothing.
    alone = teacher.encode([short], layers=[2])
    assert alone.hidden[2].shape == (1, 50, 32)
    assert torch.allclose(out.hidden[2][0, :50], alone.hidden[2][0], atol=1e-4)
    assert out.hidden[2][0, 50:].abs().max() == 0
    # Only encoder weights were loaded, and they are the saved ones (not re-initialised).
    enc = model.model.encoder
    assert torch.equal(teacher.encoder.conv1.weight, enc.conv1.weight)
    assert torch.equal(teacher.encoder.layers[1].fc2.weight, enc.layers[1].fc2.weight)
    # Same targets from the in-memory seq2seq model and from its encoder module.
    assert torch.allclose(load_encoder(model).encode([short], layers=[2]).hidden[2], alone.hidden[2], atol=1e-6)
    assert torch.allclose(load_encoder(enc).encode([short], layers=[2]).hidden[2], alone.hidden[2], atol=1e-6)
    with pytest.raises(ValueError, match="longer than the 30 s"):
        teacher.encode([np.zeros(30 * SR + 1, np.float32)])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        teacher.encode([short], layers=[5])


def test_tiny_whisper_model_checkpoint_without_preprocessor(whisper_dir, tmp_path):
    """A WhisperModel (``encoder.*`` keys) saved without a feature extractor: default 80-mel extractor."""
    from transformers import WhisperModel

    path, model = whisper_dir
    base = WhisperModel(model.config)
    base.load_state_dict(model.model.state_dict())
    base.save_pretrained(tmp_path / "wm")
    teacher = load_encoder(tmp_path / "wm")
    assert torch.equal(teacher.encoder.layers[0].fc1.weight, model.model.encoder.layers[0].fc1.weight)
    audio = _wave(1.0, 8)
    assert torch.allclose(teacher.encode([audio]).hidden[2], load_encoder(path).encode([audio]).hidden[2], atol=1e-5)


def test_whisper_teacher_object_is_accepted(whisper_dir):
    """A WhisperTeacher (duck-typed: .model, .processor, .name, .revision) gives its encoder and provenance."""
    from types import SimpleNamespace

    from transformers import WhisperFeatureExtractor

    path, model = whisper_dir
    teacher = SimpleNamespace(model=model, processor=SimpleNamespace(feature_extractor=WhisperFeatureExtractor()),
                              name="tiny-test", revision="abc123")
    enc = load_encoder(teacher)
    assert (enc.name, enc.revision, enc.kind) == ("tiny-test", "abc123", "whisper")
    assert enc.encoder is model.model.encoder  # same device and dtype: shared, not copied
    audio = _wave(0.8, 10)
    assert torch.allclose(enc.encode([audio]).hidden[2], load_encoder(path).encode([audio]).hidden[2], atol=1e-6)

    class NotLoadedYet:  # model not loaded yet: only the encoder is read from hf_dir, the full model never is
        name, revision, hf_dir, _model = "lazy-test", "def456", path, None

        @property
        def model(self):
            raise AssertionError("the full seq2seq model should not be loaded")

        processor = teacher.processor

    lazy = load_encoder(NotLoadedYet())
    assert (lazy.name, lazy.revision) == ("lazy-test", "def456")
    assert torch.allclose(lazy.encode([audio]).hidden[2], enc.encode([audio]).hidden[2], atol=1e-6)


@pytest.mark.slow
def test_bundled_whisper_base_encoder():
    pytest.importorskip("speechkd.teachers.whisper", reason="speechkd.teachers.whisper not available")
    from speechkd.teachers.whisper import load_whisper

    teacher = load_encoder("bundled:base")  # encoder-only load from the converted checkpoint
    assert teacher.name == "bundled:base" and teacher.revision
    assert (teacher.kind, teacher.num_layers, teacher.hidden_size, teacher.frame_rate_hz) == ("whisper", 6, 512, 50.0)
    out = teacher.encode([_wave(2.0, 9)], layers=[3, 6])
    assert out.lengths.tolist() == [100]
    assert out.hidden[6].shape == (1, 100, 512) and out.hidden[3].shape == (1, 100, 512)
    assert torch.isfinite(out.hidden[6]).all()
    # A trained encoder: layer outputs are far from a random init's and differ between layers.
    assert not torch.allclose(out.hidden[3], out.hidden[6], atol=1e-2)
    # Same targets as the encoder of the full WhisperTeacher model (the shared-module path).
    whisper = load_whisper("bundled:base")
    whisper.model  # load it: load_encoder now shares its encoder instead of loading again
    shared = load_encoder(whisper)
    assert shared.encoder is whisper.model.model.encoder
    assert torch.allclose(shared.encode([_wave(2.0, 9)], layers=[6]).hidden[6], out.hidden[6], atol=1e-4)
