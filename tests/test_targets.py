"""The teacher-target store: written once, exactly once after a kill, refused when it does not fit, aligned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkd.targets import (FrameMismatchError, TargetsConfig, TargetStore, TargetStoreError, align_frames,
                              extract_targets, read_index)
from test_encoders import _save_w2v, _wave

SR = 16_000


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    return _save_w2v("hubert", "layer", tmp_path_factory.mktemp("hubert") / "tiny")


def _manifest(root, n=7, broken=()):
    rows = []
    for i in range(n):
        path = root / f"u{i}.wav"
        if i in broken:
            path.write_bytes(b"not audio")
        else:
            sf.write(path, _wave(0.5 + 0.1 * i, i), SR)
        rows.append({"id": f"u{i}", "audio": str(path)})
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_store_roundtrip_matches_the_teacher_and_records_provenance(hubert_dir, tmp_path):
    from speechkd.teachers.encoders import load_encoder

    manifest = _manifest(tmp_path, broken={3})
    cfg = TargetsConfig(teacher=hubert_dir, layers=(1, -1), batch_size=2, shard_size=2, dtype="float32")
    summary = extract_targets(cfg, str(manifest), tmp_path / "store", progress=False)
    assert summary["stored_this_run"] == 6 and summary["skipped"] == 1
    store = TargetStore(tmp_path / "store")
    assert len(store) == 6 and "u3" not in store and store.layers == [1, 2]
    assert store.header["teacher"] == hubert_dir and store.frame_rate_hz == 50.0
    skipped = [json.loads(x) for x in (tmp_path / "store" / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["id"] == "u3" and "u3.wav" in skipped[0]["source"]
    teacher = load_encoder(hubert_dir)
    audio, _ = sf.read(tmp_path / "u4.wav", dtype="float32")  # what was stored: the 16-bit file, decoded
    alone = teacher.encode([audio], [2])
    got = store.get("u4", 2)
    assert got.shape == (int(alone.lengths[0]), 32)
    torch.testing.assert_close(got, alone.hidden[2][0, : got.shape[0]], atol=1e-4, rtol=1e-4)
    # readable without speechkd: plain safetensors with the header in its metadata
    from safetensors import safe_open

    row = read_index(tmp_path / "store")["u4"]
    with safe_open(str(tmp_path / "store" / row["shard"]), framework="np") as f:
        assert json.loads(f.metadata()["speechkd_targets"])["layers"] == [1, 2]
        assert f.get_tensor("u4/layer2").shape == tuple(got.shape)


def test_fp16_by_default_and_a_rerun_does_nothing(hubert_dir, tmp_path):
    manifest = _manifest(tmp_path, n=3)
    cfg = TargetsConfig(teacher=hubert_dir, layers=(-1,))
    assert extract_targets(cfg, str(manifest), tmp_path / "s", progress=False)["stored_this_run"] == 3
    again = extract_targets(cfg, str(manifest), tmp_path / "s", progress=False)
    assert again["stored_this_run"] == 0 and again["stored_before"] == 3
    assert TargetStore(tmp_path / "s").get("u0", 2).dtype == torch.float16


def test_a_store_for_another_teacher_or_layer_set_is_refused(hubert_dir, tmp_path):
    manifest = _manifest(tmp_path, n=2)
    extract_targets(TargetsConfig(teacher=hubert_dir, layers=(1,)), str(manifest), tmp_path / "s", progress=False)
    with pytest.raises(TargetStoreError, match="layers: store has \\[1\\], asked for \\[2\\]"):
        extract_targets(TargetsConfig(teacher=hubert_dir, layers=(2,)), str(manifest), tmp_path / "s", progress=False)
    store = TargetStore(tmp_path / "s")
    with pytest.raises(TargetStoreError, match="teacher"):
        store.check(teacher="facebook/hubert-base-ls960", layers=[1])
    store.check(teacher=hubert_dir, layers=[1])
    header = json.loads((tmp_path / "s" / "store.json").read_text())
    (tmp_path / "s" / "store.json").write_text(json.dumps({**header, "layers": [2]}))
    with pytest.raises(TargetStoreError, match="edited"):
        TargetStore(tmp_path / "s").check()


def test_kill_9_mid_run_then_resume_stores_every_utterance_exactly_once(hubert_dir, tmp_path):
    manifest = _manifest(tmp_path, n=9)
    store = tmp_path / "store"
    # A child process extracts with one-utterance shards and is killed (SIGKILL) right after its 4th shard rename,
    # before that shard is indexed: the worst moment.
    child = textwrap.dedent(f"""
        import os, signal
        import speechkd.targets as t
        real = t.atomic_write_bytes
        count = 0
        def write_then_die(path, data):
            global count
            real(path, data)
            count += 1
            if count == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        t.atomic_write_bytes = write_then_die
        t.extract_targets(t.TargetsConfig(teacher={hubert_dir!r}, shard_size=1, batch_size=1), {str(manifest)!r},
                          {str(store)!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(read_index(store)) == 3  # the 4th shard is on disk but not indexed: invisible
    summary = extract_targets(TargetsConfig(teacher=hubert_dir, shard_size=1, batch_size=1), str(manifest), store,
                              progress=False)
    assert summary["stored_before"] == 3 and summary["stored_this_run"] == 6
    index_lines = (store / "index-r00.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in index_lines]
    assert sorted(ids) == [f"u{i}" for i in range(9)]  # each once
    assert len(list(store.glob("shard-*.safetensors"))) == 9 and not list(store.glob(".*.tmp"))
    TargetStore(store).get("u3", 2)


def test_align_frames_pools_repeats_and_refuses_large_mismatches():
    t = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    pooled = align_frames(t, 50, 25, 5)  # Whisper/HuBERT 50 frames/s onto a 25 frames/s student
    assert pooled.shape == (5, 3) and pooled[0, 0] == 0.5 and pooled[4, 0] == 8.5
    assert align_frames(t, 50, 25, 6).shape == (6, 3)  # one frame short: padded with the edge frame
    assert align_frames(t, 25, 50, 20)[:4, 0].tolist() == [0, 0, 1, 1]
    assert align_frames(t, 50, 100 / 3, 7).shape == (7, 3)  # non-integer ratio: interpolated
    with pytest.raises(FrameMismatchError, match="tolerance 2"):
        align_frames(t, 50, 25, 9)
    assert align_frames(t.half(), 50, 50, 10).dtype == torch.float16
