"""The numpy front ends equal the references they replace: kaldi-native-fbank (as sherpa-onnx configures it)
and transformers' Whisper / Wav2Vec2 feature extractors."""

from __future__ import annotations

import numpy as np
import pytest

from speechkd_runtime import features as F


def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    # A tone plus noise: structured enough that every mel bin carries signal.
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _knf_fbank(samples: np.ndarray) -> np.ndarray:
    import kaldi_native_fbank as knf  # dev dependency: the reference implementation
    # Exactly what sherpa-onnx's offline stream sets (sherpa-onnx/csrc/offline-stream.cc + features.h);
    # the rest (preemph 0.97, round_to_power_of_two, use_energy false, log fbank) are knf defaults.
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    opts.mel_opts.is_librosa = False
    assert opts.frame_opts.preemph_coeff == pytest.approx(0.97) and opts.frame_opts.round_to_power_of_two
    assert not opts.use_energy and opts.use_log_fbank and opts.use_power
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, samples.tolist())
    fb.input_finished()
    return np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)], dtype=np.float32).reshape(-1, 80)


@pytest.mark.parametrize("n", [16000, 12345, 401, 100, 81, 79, 16000 * 7 + 3])
def test_kaldi_fbank_equals_kaldi_native_fbank(n):
    x = _audio(n, seed=n)
    ref = _knf_fbank(x)
    ours = F.kaldi_fbank(x)
    assert ours.shape == ref.shape == (F.fbank_num_frames(n), 80)
    assert ours.dtype == np.float32
    if ref.size:
        # knf computes in float32, we in float64: they agree to float32 rounding, which shows most in the
        # log of the weakest bins (energy ~1e-6, where the FFT's rounding error is relatively largest).
        np.testing.assert_allclose(ours, ref, atol=5e-4, rtol=0)
        assert np.abs(ours - ref).mean() < 2e-5


def test_kaldi_fbank_silence_hits_the_same_floor():
    x = np.zeros(8000, dtype=np.float32)
    np.testing.assert_allclose(F.kaldi_fbank(x), _knf_fbank(x), atol=1e-5)
    assert np.allclose(F.kaldi_fbank(x), np.log(np.finfo(np.float32).eps))


@pytest.mark.parametrize("kind", ["fbank", "whisper_mel"])
@pytest.mark.parametrize("bins", [23, 80, 128])
def test_banded_filters_equal_the_matrix_product(kind, bins):
    # kaldi's 512-point FFT leaves some of 128 bins without any FFT bin: those columns must come out zero.
    filters = F.kaldi_mel_banks(bins) if kind == "fbank" else F.slaney_mel_filters(bins)
    power = np.random.default_rng(bins).random((37, filters.shape[0])) ** 4
    np.testing.assert_allclose(F.banded_filters(kind, bins)(power), power @ filters, rtol=1e-12, atol=1e-15)
    assert F.banded_filters(kind, bins)(power[:0]).shape == (0, bins)


def test_non_banded_filters_are_refused():
    with pytest.raises(ValueError, match="not banded"):
        F.BandedFilters(np.ones((10, 4)))
    interleaved = np.zeros((10, 3))
    interleaved[[2, 6], 0] = 1.0  # column 0 has a hole where column 2 lies
    interleaved[4, 2] = 1.0
    with pytest.raises(ValueError, match="not banded"):
        F.BandedFilters(interleaved)


def test_slaney_mel_filters_equal_transformers():
    from transformers.audio_utils import mel_filter_bank

    for bins in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=bins, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(F.slaney_mel_filters(bins), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bins", [80, 128])
def test_whisper_log_mel_equals_transformers(bins):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=bins)
    x = _audio(23456)
    # Real length (teacher-initialised CTC students): the numpy path on the unpadded clip.
    ref = fe._np_extract_fbank_features(x[None], "cpu")[0].T
    ours = F.whisper_log_mel(x, bins)
    assert ours.shape == ref.shape == (23456 // 160, bins)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # Padded to 30 s (Whisper models): what the extractor's __call__ feeds the model.
    padded = fe(x, sampling_rate=16000, return_tensors="np")["input_features"][0].T
    ours30 = F.whisper_log_mel(x, bins, pad_to_seconds=30)
    assert ours30.shape == (3000, bins)
    ref30 = fe._np_extract_fbank_features(np.pad(x, (0, 480000 - len(x)))[None], "cpu")[0].T
    np.testing.assert_allclose(ours30, ref30, atol=1e-4)
    np.testing.assert_allclose(ours30, padded, atol=1e-4)  # and the torch path __call__ uses


def test_waveform_normalisation_equals_wav2vec2_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    x = _audio(5000) + 0.2
    ref = Wav2Vec2FeatureExtractor(do_normalize=True)(x, sampling_rate=16000, return_tensors="np")["input_values"][0]
    ours = F.compute_features(F.make_frontend("waveform"), x)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert abs(ours.mean()) < 1e-5 and abs(ours.std() - 1) < 1e-3


def test_dispatch_lengths_and_padding():
    x = _audio(16000 * 2 + 55)
    for kind in F.FRONTEND_KINDS:
        fe = F.make_frontend(kind)
        feats = F.compute_features(fe, x)
        assert len(feats) == F.num_input_frames(fe, len(x))
        assert (feats.shape[1] if feats.ndim == 2 else None) == F.feature_dim(fe)
    assert F.frame_rate_hz(F.make_frontend("fbank")) == 100
    assert F.frame_rate_hz(F.make_frontend("waveform")) == 16000
    a, b = F.kaldi_fbank(x[:8000]), F.kaldi_fbank(x)
    batch, lens = F.pad_batch([a, b])
    assert batch.shape == (2, len(b), 80) and lens.tolist() == [len(a), len(b)] and lens.dtype == np.int64
    assert np.all(batch[0, len(a):] == 0) and np.array_equal(batch[1], b)


def test_bad_inputs_fail_clearly():
    with pytest.raises(F.FeatureError, match="choose one of"):
        F.compute_features({"kind": "mfcc"}, np.zeros(100, np.float32))
    with pytest.raises(F.FeatureError, match="only 16000"):
        F.make_frontend("fbank", sample_rate=8000)
    with pytest.raises(F.FeatureError, match="mono"):
        F.kaldi_fbank(np.zeros((100, 2), np.float32))
    with pytest.raises(F.FeatureError, match="int16"):
        F.kaldi_fbank(np.zeros(100, np.int16))


def test_runtime_features_do_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    export = Path(F.__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, %r); import speechkd_runtime.features; "
            "print('torch' in sys.modules, 'speechkd' in sys.modules)" % str(export))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
