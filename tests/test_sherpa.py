"""An exported fbank CTC student runs unchanged in sherpa-onnx (as a "zipformer_ctc" model) and agrees with us."""

from __future__ import annotations

import pytest
import sherpa_onnx  # the `sherpa` extra; installed in the dev environment

from speechkd_runtime.ctc import CtcModel


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, synth_corpus):
    from test_export import make_student

    from speechkd.onnx_export.ctc import ExportConfig, export_ctc

    root = tmp_path_factory.mktemp("sherpa")
    make_student("conformer_ctc", root / "student")
    export_ctc(root / "student", root / "onnx", ExportConfig(quantize=("dynamic",)))
    # A tiny model's matrices are all below the weight-only size bar; this copy stores every one of them as
    # int8 + DequantizeLinear, so sherpa-onnx is shown to run that form too.
    import shutil

    from speechkd.onnx_export.quantize import store_weights_int8

    shutil.copy(root / "onnx" / "model.onnx", root / "onnx" / "model.weight-only.onnx")
    assert store_weights_int8(root / "onnx" / "model.weight-only.onnx", min_elements=256)
    return root / "onnx"


@pytest.fixture(scope="module")
def clips(synth_corpus):
    from speechkd.data import decode, read_manifest

    return [decode(u) for u in read_manifest(synth_corpus / "test.jsonl") + read_manifest(synth_corpus / "dev.jsonl")]


@pytest.mark.parametrize("model_file", ["model.onnx", "model.int8.onnx", "model.weight-only.onnx"])
def test_sherpa_onnx_gives_our_transcripts(export_dir, clips, model_file):
    ours = CtcModel(export_dir, model_file=model_file, num_threads=1).transcribe(clips)
    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(export_dir / model_file), tokens=str(export_dir / "tokens.txt"), num_threads=1,
        sample_rate=16000, feature_dim=80)
    single = []
    for audio in clips:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, audio)
        recognizer.decode_stream(stream)
        single.append(" ".join(stream.result.text.split()))
    assert all(ours) and len(set(ours)) > 1  # non-trivial: text for every clip, and it depends on the audio
    assert single == ours
    if model_file == "model.int8.onnx":
        return  # dynamic int8 is batch-dependent (per-batch activation scales): only single streams are comparable
    # sherpa-onnx's batched path pads features with log(1e-10), as our runtime does, and batches as we do
    streams = []
    for audio in clips:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, audio)
        streams.append(stream)
    recognizer.decode_streams(streams)
    batched = [" ".join(s.result.text.split()) for s in streams]
    assert batched == ours
