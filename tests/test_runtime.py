"""The on-device runtime: torch-free, files or arrays at any rate, long audio chunked at pauses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speechkd_runtime
from speechkd_runtime.audio import AudioError, resample
from speechkd_runtime.ctc import CtcModel, plan_chunks, session_options

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter that sees only export/ and refuses torch/speechkd imports outright.
NO_TORCH_PRELUDE = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'speechkd', 'transformers'):
            raise ImportError('the runtime must not import ' + name)
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ('', '.', {root!r})]
sys.path.insert(0, {export!r})
"""


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from test_export import make_student

    from speechkd.onnx_export.ctc import ExportConfig, export_ctc

    root = tmp_path_factory.mktemp("runtime")
    model = make_student("conformer_ctc", root / "student")
    export_ctc(root / "student", root / "onnx", ExportConfig(quantize=("dynamic",)))
    return root / "onnx", model


@pytest.fixture(scope="module")
def clips(synth_corpus):
    from speechkd.data import decode, read_manifest

    utts = read_manifest(synth_corpus / "dev.jsonl")
    return [(u.audio, decode(u)) for u in utts]


def run_isolated(code: str, cwd: Path) -> subprocess.CompletedProcess:
    prelude = NO_TORCH_PRELUDE.format(root=str(ROOT), export=str(ROOT / "export"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_runtime_never_imports_torch(export_dir, clips, tmp_path):
    onnx_dir, _ = export_dir
    path, audio = clips[0]
    np.save(tmp_path / "a.npy", audio)
    code = f"""
import json, numpy as np, speechkd_runtime
a = speechkd_runtime.transcribe({str(onnx_dir)!r}, {path!r})
b = speechkd_runtime.transcribe({str(onnx_dir)!r}, np.load('a.npy'), sample_rate=16000)
print(json.dumps({{"a": a, "b": b, "mods": sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'speechkd'))}}))
"""
    proc = run_isolated(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["mods"] == [] and out["a"] == out["b"] and out["a"]


def test_cli_transcribes_files_without_torch(export_dir, clips, tmp_path):
    onnx_dir, _ = export_dir
    paths = [p for p, _ in clips[:2]]
    code = f"""
import runpy
sys.argv = ['speechkd_runtime', {str(onnx_dir)!r}, *{paths!r}, '--num-threads', '1']
runpy.run_module('speechkd_runtime', run_name='__main__')
"""
    proc = run_isolated(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    expected = CtcModel(onnx_dir, model_file="model.onnx").transcribe([a for _, a in clips[:2]])
    assert [line.split("\t")[1] for line in lines] == expected
    proc = run_isolated(f"""
import runpy
sys.argv = ['speechkd_runtime', {str(tmp_path)!r}, 'x.wav']
runpy.run_module('speechkd_runtime', run_name='__main__')
""", tmp_path)
    assert proc.returncode == 2 and "no config.json" in proc.stderr


def test_runtime_matches_the_pytorch_student(export_dir, clips):
    from speechkd.students import student_recognizer

    onnx_dir, model = export_dir
    audios = [a for _, a in clips]
    ours = CtcModel(onnx_dir, model_file="model.onnx").transcribe(audios)
    theirs = student_recognizer(model).transcribe(audios)
    assert ours == theirs and all(ours)
    assert speechkd_runtime.transcribe(onnx_dir, clips[0][0]) == ours[0]


def test_sessions_do_not_spin_between_calls():
    # Features and decoding run in numpy between onnxruntime calls, on the same cores.
    opts = session_options(2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert session_options().intra_op_num_threads == 0  # onnxruntime's default: one thread per core


def test_concurrent_calls_give_the_same_results_and_overlap(export_dir, clips, monkeypatch):
    import threading
    import time

    onnx_dir, _ = export_dir
    feats = [CtcModel(onnx_dir).features(a) for _, a in clips]
    one_at_a_time = CtcModel(onnx_dir, model_file="model.int8.onnx", num_threads=2, concurrent_calls=1)
    concurrent = CtcModel(onnx_dir, model_file="model.int8.onnx", num_threads=2)
    assert concurrent.concurrent_calls == 2 and concurrent.default_batch_size == 1  # dynamic int8: per utterance
    expected = one_at_a_time.log_probs(feats)
    in_flight, most = [0], [0]
    lock = threading.Lock()
    run = concurrent.run

    def counting_run(batch, lens):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)  # hold the call open so a second worker, if there is one, overlaps it
        try:
            return run(batch, lens)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(concurrent, "run", counting_run)
    got = concurrent.log_probs(feats)
    assert most[0] == 2
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(ValueError, match="concurrent_calls"):
        CtcModel(onnx_dir, concurrent_calls=-1)

    # A batched model splits its batches so that each concurrent call gets one.
    fp32 = CtcModel(onnx_dir, model_file="model.onnx", concurrent_calls=2)
    sizes = []
    fp32_run = fp32.run
    monkeypatch.setattr(fp32, "run", lambda batch, lens: sizes.append(len(lens)) or fp32_run(batch, lens))
    fp32.log_probs(feats, batch_size=8)
    assert sorted(sizes) == sorted([len(feats) - len(feats) // 2, len(feats) // 2]) and len(feats) <= 16


def test_other_sample_rates_are_resampled(export_dir, clips, tmp_path):
    import soxr

    onnx_dir, _ = export_dir
    _, audio = clips[1]
    model = CtcModel(onnx_dir, model_file="model.onnx")
    reference = model.transcribe([audio])[0]
    for rate in (48000, 8000 * 3):
        # the same speech stored at another rate; soxr (not ours) makes the file, ours reads it back
        path = tmp_path / f"clip_{rate}.wav"
        stereo = np.stack([soxr.resample(audio, 16000, rate)] * 2, axis=1)
        sf.write(path, stereo, rate, subtype="FLOAT")
        back = resample(soxr.resample(audio, 16000, rate), rate, 16000)
        n = min(len(back), len(audio))
        # band-limited round trip: what is lost is the 7.56-8 kHz band outside the anti-aliasing cutoff
        assert np.sqrt(np.mean((back[:n] - audio[:n]) ** 2)) < 0.05 * np.sqrt(np.mean(audio**2))
        assert speechkd_runtime.transcribe(onnx_dir, path, model_file="model.onnx") == reference
        assert model.transcribe([soxr.resample(audio, 16000, rate)], sample_rate=rate)[0] == reference
    with pytest.raises(AudioError, match="sample_rate"):
        speechkd_runtime.transcribe(onnx_dir, audio)


def test_resampler_is_band_limited():
    rate_in, rate_out = 44100, 16000
    t = np.arange(rate_in * 2) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    alias = np.sin(2 * np.pi * 9000 * t).astype(np.float32)  # above the output Nyquist: must vanish
    got = resample(tone, rate_in, rate_out)
    want = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(got)) / rate_out)
    inner = slice(1600, -1600)
    assert len(got) == 2 * rate_out and np.max(np.abs(got - want)[inner]) < 1e-4
    assert np.sqrt(np.mean(resample(alias, rate_in, rate_out)[inner] ** 2)) < 1e-4
    with pytest.raises(AudioError, match="filter phases"):
        resample(tone, 16000, 44101)


def test_long_audio_is_chunked_at_pauses_and_every_chunk_is_transcribed(export_dir, clips):
    onnx_dir, _ = export_dir
    model = CtcModel(onnx_dir, model_file="model.onnx", max_chunk_s=12.0, min_chunk_s=6.0)
    gap = np.zeros(8000, dtype=np.float32)  # 0.5 s pauses between the utterances
    parts = [a for _, a in clips] * 4
    long = np.concatenate([x for a in parts for x in (a, gap)])
    assert len(long) / 16000 > 3 * model.max_chunk_s
    spans = plan_chunks(long, 16000, max_chunk_s=12.0, min_chunk_s=6.0)
    assert spans[0][0] == 0 and spans[-1][1] == len(long) and len(spans) >= 4
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))  # contiguous, nothing dropped
    assert all(b - a <= 12 * 16000 for a, b in spans)
    for _, cut in spans[:-1]:
        assert np.all(long[cut - 400 : cut + 400] == 0)  # each cut lies inside a pause, not in a word
    text = model.transcribe([long])[0]
    pieces = [model.transcribe([long[a:b]])[0] for a, b in spans]
    assert all(pieces) and text == " ".join(pieces)


def test_too_short_audio_gives_empty_text(export_dir):
    onnx_dir, _ = export_dir
    model = CtcModel(onnx_dir)
    assert model.transcribe([np.zeros(50, np.float32), np.zeros(0, np.float32)]) == ["", ""]


@pytest.fixture(scope="module")
def lm_export_dir(export_dir, synth_corpus, tmp_path_factory):
    """The same student exported again with a word trigram (from the corpus's texts) shipped beside it."""
    from speechkd.onnx_export.ctc import ExportConfig, export_ctc
    from speechkd.lm import DecodingLMConfig, build_decoding_lm

    root = tmp_path_factory.mktemp("runtime_lm")
    arpa = root / "lm.arpa"
    build_decoding_lm(DecodingLMConfig(text=str(synth_corpus / "train.jsonl")), arpa)
    student_dir = export_dir[0].parent / "student"
    cfg = ExportConfig(quantize=(), lm=str(arpa), beam_size=4, lm_weight=0.5)
    export_ctc(student_dir, root / "onnx", cfg)
    return root / "onnx", arpa, student_dir


def test_an_exported_lm_is_used_by_default_and_matches_pytorch(lm_export_dir, clips):
    from speechkd.evaluate import load_recognizer
    from speechkd_runtime.beam import BeamSearchOptions

    onnx_dir, arpa, student_dir = lm_export_dir
    config = json.loads((onnx_dir / "config.json").read_text())
    assert config["decoding"]["lm"] == "lm.arpa" and config["decoding"]["beam_size"] == 4
    assert (onnx_dir / "lm.arpa").read_bytes() == arpa.read_bytes()
    audios = [a for _, a in clips]
    shipped = CtcModel(onnx_dir)
    assert shipped.beam_search is not None and shipped.beam_search.opt.lm_weight == 0.5
    assert CtcModel(onnx_dir, greedy=True).beam_search is None
    with_lm = shipped.transcribe(audios)
    # The PyTorch student with the same LM and settings decodes the same log-probs the same way.
    torch_rec = load_recognizer(str(student_dir), lm=str(arpa), beam=BeamSearchOptions(beam_size=4, lm_weight=0.5))
    assert torch_rec.name.endswith("[torch + LM]")
    assert torch_rec.transcribe(audios) == with_lm
    assert with_lm != CtcModel(onnx_dir, greedy=True).transcribe(audios)  # the LM changed the search


def test_runtime_lm_decoding_needs_no_torch(lm_export_dir, clips, tmp_path):
    onnx_dir, _, _ = lm_export_dir
    path = clips[0][0]
    code = f"""
import runpy
sys.argv = ['speechkd_runtime', {str(onnx_dir)!r}, {path!r}, '--beam-size', '4']
runpy.run_module('speechkd_runtime', run_name='__main__')
"""
    proc = run_isolated(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split("\t")[1] == CtcModel(onnx_dir).transcribe_files([path])[0]
    proc = run_isolated(code.replace("'--beam-size', '4'", "'--greedy'"), tmp_path)
    assert proc.stdout.strip().split("\t")[1] == CtcModel(onnx_dir, greedy=True).transcribe_files([path])[0]


def test_bad_lm_settings_are_refused(lm_export_dir, tmp_path):
    from speechkd.onnx_export.ctc import ExportConfig

    onnx_dir, _, _ = lm_export_dir
    with pytest.raises(ValueError, match="does not exist.*speechkd lm"):
        ExportConfig(lm=str(tmp_path / "none.arpa")).validate()
    bad = tmp_path / "bad_decoding"
    bad.mkdir()
    for f in onnx_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["decoding"]["beam_width"] = 3
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(speechkd_runtime.ModelDirError, match="beam_width"):
        CtcModel(bad)
