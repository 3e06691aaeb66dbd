"""speechkd.data: readers, decoding, validation, skip list. Every fixture is generated into tmp_path."""

from __future__ import annotations

import json
import os
import logging
import pickle

import numpy as np
import pytest
import soundfile as sf

from speechkd.config import ConfigError, load_config
from speechkd.data import (
    AudioConfig,
    AudioError,
    DataError,
    SkipList,
    Utterance,
    decode,
    iter_audio,
    load_audio,
    open_data,
    read_audiofolder,
    read_hf_dataset,
    read_manifest,
)
from speechkd_runtime.audio import SAMPLE_RATE_HZ

SR = SAMPLE_RATE_HZ


def tone(freq=440.0, sr=SR, seconds=0.5, amp=0.3, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path, data=None, sr=SR, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone() if data is None else data, sr, subtype=subtype)
    return path


def dominant_hz(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)]


def write_manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------- decoding


def test_load_audio_returns_float32_mono_16k(tmp_path):
    x = load_audio(write(tmp_path / "a.wav"))
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == SR // 2
    np.testing.assert_allclose(x, tone(), atol=1e-4)


@pytest.mark.parametrize("sr", [8_000, 44_100, 48_000])
def test_resampling_keeps_a_1khz_sine_a_1khz_sine(tmp_path, sr):
    x = load_audio(write(tmp_path / f"s{sr}.wav", tone(1000.0, sr, seconds=1.0), sr))
    assert abs(len(x) - SR) <= 1
    assert abs(dominant_hz(x, SR) - 1000.0) <= 1.0
    # No aliasing or level loss: the resampled signal matches a sine synthesised at 16 kHz (edges aside).
    ref = tone(1000.0, SR, seconds=1.0)
    np.testing.assert_allclose(x[200:-200], ref[200:-200], atol=2e-3)


def test_int16_pcm_is_scaled_to_unit_range(tmp_path):
    pcm = (tone(amp=0.5) * 32767).astype(np.int16)
    path = write(tmp_path / "pcm16.wav", pcm, subtype="PCM_16")
    assert sf.info(str(path)).subtype == "PCM_16"
    x = load_audio(path)
    assert 0.49 < np.abs(x).max() <= 0.5
    # The same rule for in-memory integer arrays.
    y = decode(Utterance(id="m", array=pcm, sampling_rate=SR))
    np.testing.assert_allclose(x, y, atol=1e-4)


def test_stereo_is_mixed_per_config(tmp_path):
    left, right = tone(440.0, amp=0.4), tone(440.0, amp=0.2)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1))
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-4)
    np.testing.assert_allclose(load_audio(path, AudioConfig(mono="first")), left, atol=1e-4)
    with pytest.raises(AudioError, match="2 channels") as e:
        load_audio(path, AudioConfig(mono="error"))
    assert str(path) in str(e.value)
    # [channels, samples] arrays (HF/torchcodec layout) mix the same way.
    y = decode(Utterance(id="x", array=np.stack([left, right]), sampling_rate=SR))
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-4)


def test_five_minute_file_loads_fully_and_is_skipped_when_capped(tmp_path):
    path = write(tmp_path / "long.flac", tone(seconds=300.0), subtype="PCM_16")
    assert len(load_audio(path)) == 300 * SR  # no max_duration_s: never truncated
    with pytest.raises(AudioError, match=r"300\.0 s long, longer than audio.max_duration_s = 30") as e:
        load_audio(path, AudioConfig(max_duration_s=30))
    assert str(path) in str(e.value)
    skips = SkipList(None)
    assert list(iter_audio(open_data(path), AudioConfig(max_duration_s=30), skips)) == []
    assert "longer than" in skips.records[0]["reason"]


def _bad_files(tmp_path):
    """name -> (path, expected message fragment)."""
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = tone()
    nan[100] = np.nan
    inf = tone()
    inf[5] = np.inf
    return {
        "corrupt": (corrupt, "cannot decode"),
        "empty": (empty, "empty file (0 bytes)"),
        "no_samples": (write(tmp_path / "nosamples.wav", np.zeros(0, np.float32)), "no samples"),
        "silent": (write(tmp_path / "silent.wav", np.zeros(SR, np.float32)), "silent"),
        "nan": (write(tmp_path / "nan.wav", nan, subtype="FLOAT"), "NaN or Inf"),
        "inf": (write(tmp_path / "inf.wav", inf, subtype="FLOAT"), "NaN or Inf"),
        "short": (write(tmp_path / "short.wav", tone(seconds=0.05)), "shorter than audio.min_duration_s"),
        "missing": (tmp_path / "missing.wav", "file not found"),
    }


@pytest.mark.parametrize("kind", ["corrupt", "empty", "no_samples", "silent", "nan", "inf", "short", "missing"])
def test_bad_audio_message_names_the_file_and_the_fix(tmp_path, kind):
    path, fragment = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert fragment in msg and str(path) in msg
    assert ";" in msg  # problem; fix


def test_bad_in_memory_arrays():
    with pytest.raises(AudioError, match="sampling_rate"):
        decode(Utterance(id="u1", array=tone()))
    with pytest.raises(AudioError, match="u2.*silent"):
        decode(Utterance(id="u2", array=np.zeros(SR), sampling_rate=SR))
    with pytest.raises(AudioError, match="integer PCM"):  # int16 values stored as float
        decode(Utterance(id="u3", array=tone() * 32767, sampling_rate=SR))
    with pytest.raises(AudioError, match="no audio"):
        decode(Utterance(id="u4"))


def test_iter_audio_skips_bad_items_records_and_logs_them(tmp_path, caplog):
    bad = _bad_files(tmp_path)
    good = [write(tmp_path / f"good{i}.wav") for i in range(2)]
    rows = [{"audio": str(good[0])}] + [{"audio": str(p)} for p, _ in bad.values()] + [{"audio": str(good[1])}]
    utts = read_manifest(write_manifest(tmp_path / "m.jsonl", rows))
    skips = SkipList(tmp_path / "skipped.jsonl", stage="label")
    with caplog.at_level(logging.WARNING, logger="speechkd.data"):
        out = list(iter_audio(utts, AudioConfig(), skips))
    assert [u.id for u, _ in out] == ["good0", "good1"]
    assert all(len(x) == SR // 2 for _, x in out)
    assert len(skips) == len(bad)
    by_id = {r["id"]: r for r in skips.records}
    for path, fragment in bad.values():
        record = by_id[path.stem]
        assert fragment in record["reason"] and record["source"] == str(path) and record["stage"] == "label"
    assert sum("skipping" in r.getMessage() for r in caplog.records) == len(bad)
    # A custom log callable receives the same warnings.
    seen = []
    list(iter_audio(utts, skip_list=None, log=seen.append))
    assert len(seen) == len(bad)


def test_skip_list_persists_and_does_not_duplicate(tmp_path):
    path = tmp_path / "exp" / "skipped.jsonl"
    with SkipList(path) as skips:
        skips.add(Utterance(id="a", audio="/x/a.wav"), "silent")
        skips.add("b", "corrupt", source="/x/b.wav")
        skips.add("b", "corrupt", source="/x/b.wav")
    reopened = SkipList(path)
    assert len(reopened) == 2 and reopened.ids == {"a", "b"} and "a" in reopened
    assert reopened.records[0] == {"id": "a", "source": "/x/a.wav", "reason": "silent", "stage": "data"}
    reopened.add("a", "silent")  # seen in the earlier run: not written twice
    reopened.add("c", "too long")
    reopened.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["a", "b", "c"]
    memory = SkipList(None)
    memory.add("z", "bad")
    assert len(memory) == 1 and memory.ids == {"z"}


def test_audio_config_from_yaml(tmp_path):
    (tmp_path / "audio.yaml").write_text("max_duration_s: 30\nmono: first\n")
    cfg = load_config(AudioConfig, tmp_path / "audio.yaml")
    assert cfg == AudioConfig(max_duration_s=30.0, mono="first")
    (tmp_path / "bad.yaml").write_text("mono: average\n")
    with pytest.raises(ConfigError, match="mono"):
        load_config(AudioConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="max_duration_s"):
        load_config(AudioConfig, None, max_duration_s=0.05)


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_fields_paths_and_meta(tmp_path):
    write(tmp_path / "audio" / "a.wav")
    b = write(tmp_path / "elsewhere" / "b.wav", tone(sr=8000, seconds=1.0), sr=8000)
    write(tmp_path / "audio" / "c.wav")
    m = write_manifest(tmp_path / "m.jsonl", [
        {"audio": "audio/a.wav", "text": "hello", "speaker": 7, "lang": "en"},
        {"audio_filepath": str(b), "duration": 1.0},  # NeMo key, absolute path
        {"file_name": "audio/c.wav", "id": "custom"},
    ])
    a, bb, c = read_manifest(m)
    assert (a.id, a.audio, a.text, a.speaker, a.meta) == ("a", str(tmp_path / "audio" / "a.wav"), "hello", "7",
                                                          {"lang": "en"})
    assert a.duration == pytest.approx(0.5) and a.sampling_rate == SR  # from the header
    assert (bb.id, bb.audio, bb.duration, bb.text) == ("b", str(b), 1.0, None)
    assert c.id == "custom"
    assert len(decode(bb)) == SR  # 1 s at 8 kHz -> 16k samples
    assert a.to_record() == {"lang": "en", "id": "a", "audio": a.audio, "text": "hello", "speaker": "7",
                             "duration": pytest.approx(0.5)}
    pickle.loads(pickle.dumps(a))


def test_manifest_ids_stable_and_unique_when_stems_collide(tmp_path):
    for d in ("spk1", "spk2"):
        write(tmp_path / d / "utt.wav")
    write(tmp_path / "spk1" / "other.wav")
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "spk1/utt.wav"}, {"audio": "spk2/utt.wav"},
                                              {"audio": "spk1/other.wav"}])
    ids = [u.id for u in read_manifest(m)]
    assert ids == ["spk1/utt", "spk2/utt", "other"]
    assert [u.id for u in read_manifest(m)] == ids  # same input, same ids


def test_manifest_duplicate_explicit_ids_are_listed(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "a.wav", "id": "x"}, {"audio": "b.wav", "id": "x"},
                                              {"audio": "c.wav", "id": "y"}, {"audio": "d.wav", "id": "y"}])
    with pytest.raises(DataError, match=r"duplicate ids \['x', 'y'\]") as e:
        read_manifest(m)
    assert str(m) in str(e.value)


def test_manifest_structural_errors(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav"}\n{"audio": oops}\n')
    with pytest.raises(DataError, match=rf"{m}:2: not valid JSON"):
        read_manifest(m)
    write_manifest(m, [{"text": "no path"}])
    with pytest.raises(DataError, match=rf"{m}:1: no audio path"):
        read_manifest(m)
    m.write_text("\n")
    with pytest.raises(DataError, match="no entries"):
        read_manifest(m)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_manifest_require_text(tmp_path):
    write(tmp_path / "a.wav")
    write(tmp_path / "b.wav")
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": "a.wav"}, {"audio": "b.wav"}])
    with pytest.raises(DataError) as e:
        read_manifest(m, require_text=True)
    assert str(m) in str(e.value) and "`text`" in str(e.value) and "label stage" in str(e.value)
    write_manifest(m, [{"audio": "a.wav", "text": "hi"}, {"audio": "b.wav", "text": "  "}])
    utts = read_manifest(m, require_text=True)
    skips = SkipList(None)
    assert [u.id for u, _ in iter_audio(utts, skip_list=skips)] == ["a"]
    assert skips.ids == {"b"} and f"{m}:2" in skips.records[0]["reason"] and "no text" in skips.records[0]["reason"]
    assert [u.id for u, _ in iter_audio(read_manifest(m))] == ["a", "b"]  # text not required: kept


def test_manifest_nemo_offset_segments(tmp_path):
    x = np.concatenate([tone(440.0, seconds=1.0), tone(1000.0, seconds=1.0)])
    write(tmp_path / "long.wav", x)
    m = write_manifest(tmp_path / "m.json", [{"audio_filepath": "long.wav", "offset": 0.0, "duration": 1.0},
                                             {"audio_filepath": "long.wav", "offset": 1.0, "duration": 1.0}])
    first, second = open_data(m)
    assert (first.id, second.id) == ("long_00000000", "long_00001000")
    assert len(decode(second)) == SR and abs(dominant_hz(decode(second), SR) - 1000.0) <= 1.0
    assert abs(dominant_hz(decode(first), SR) - 440.0) <= 1.0


# ------------------------------------------------------------------------------------------- audiofolder


def test_audiofolder_without_metadata_is_recursive_and_sorted(tmp_path):
    write(tmp_path / "b.wav")
    write(tmp_path / "sub" / "a.flac")
    write(tmp_path / "sub" / "b.ogg", subtype="VORBIS")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "._b.wav").write_bytes(b"macOS resource fork")
    utts = read_audiofolder(tmp_path)
    assert [u.id for u in utts] == ["b", "a", "sub/b"]  # sorted by path; colliding stems use the path
    assert [u.audio for u in utts] == [str(tmp_path / p) for p in ("b.wav", "sub/a.flac", "sub/b.ogg")]
    assert all(len(x) == SR // 2 for _, x in iter_audio(utts))
    assert [u.id for u in read_audiofolder(tmp_path)] == [u.id for u in utts]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_audiofolder_metadata_drives_the_list(tmp_path, fmt, caplog):
    write(tmp_path / "data" / "one.wav")
    write(tmp_path / "data" / "unlisted.wav")
    rows = [("data/one.wav", "first text", "s1"), ("data/gone.wav", "second", "s2")]
    if fmt == "csv":
        (tmp_path / "metadata.csv").write_text("file_name,text,speaker,quality\n" +
                                               "".join(f"{f},{t},{s},good\n" for f, t, s in rows))
    else:
        write_manifest(tmp_path / "metadata.jsonl",
                       [{"file_name": f, "text": t, "speaker": s, "quality": "good"} for f, t, s in rows])
    with caplog.at_level(logging.WARNING, logger="speechkd.data"):
        utts = read_audiofolder(tmp_path, require_text=True)
    assert "not listed in the metadata" in caplog.text
    assert [(u.id, u.text, u.speaker, u.meta) for u in utts] == [
        ("one", "first text", "s1", {"quality": "good"}), ("gone", "second", "s2", {"quality": "good"})]
    skips = SkipList(None)
    assert [u.id for u, _ in iter_audio(utts, skip_list=skips)] == ["one"]
    assert "gone.wav: file not found" in skips.records[0]["reason"]


def test_audiofolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_audiofolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        read_audiofolder(tmp_path / "empty")
    write(tmp_path / "x" / "a.wav")
    with pytest.raises(DataError, match="metadata.csv") as e:
        read_audiofolder(tmp_path / "x", require_text=True)
    assert str(tmp_path / "x") in str(e.value)
    (tmp_path / "x" / "metadata.csv").write_text("path,text\na.wav,hi\n")
    with pytest.raises(DataError, match="no `file_name` column"):
        read_audiofolder(tmp_path / "x")


# ------------------------------------------------------------------------------------------- HF datasets


def test_hf_dataset_with_decoded_arrays(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({
        "audio": [{"array": tone(1000.0, 44_100, 1.0), "sampling_rate": 44_100},
                  {"array": tone(seconds=0.5), "sampling_rate": SR}],
        "sentence": ["one", "two"],
        "client": ["c1", "c2"],
    })
    utts = read_hf_dataset(ds, text_column="sentence")
    assert [u.id for u in utts] == ["00000000", "00000001"]  # no id column, no paths: row index
    assert [u.text for u in utts] == ["one", "two"]
    assert utts[0].meta == {"sentence": "one", "client": "c1"}  # original columns kept for write-back
    assert utts[0].duration == pytest.approx(1.0) and utts[0].sampling_rate == 44_100
    x = decode(utts[0])
    assert abs(len(x) - SR) <= 1 and abs(dominant_hz(x, SR) - 1000.0) <= 1.0
    pickle.loads(pickle.dumps(utts))  # loaders travel to worker processes


def test_hf_dataset_with_paths_decode_false_and_default_audio_feature(tmp_path):
    from datasets import Audio, Dataset

    paths = [str(write(tmp_path / "a" / "x.wav")), str(write(tmp_path / "b" / "x.wav")),
             str(tmp_path / "missing.wav")]
    for feature in (Audio(decode=False), Audio()):  # Audio() would need torchcodec to decode: we never ask it to
        ds = Dataset.from_dict({"audio": paths, "text": ["a", "b", "c"]}).cast_column("audio", feature)
        utts = read_hf_dataset(ds)
        assert [u.audio for u in utts] == paths and utts[0].duration == pytest.approx(0.5)
        # Colliding stems fall back to the path without extension.
        assert utts[0].id.endswith("a/x") and utts[1].id.endswith("b/x") and utts[2].id == "missing"
        skips = SkipList(None)
        assert len(list(iter_audio(utts, skip_list=skips))) == 2
        assert "file not found" in skips.records[0]["reason"] and paths[2] in skips.records[0]["reason"]


def test_hf_dataset_with_embedded_bytes_and_id_column(tmp_path):
    from datasets import Audio, Dataset

    blob = write(tmp_path / "x.flac", tone(1000.0, 8000, 1.0), sr=8000).read_bytes()
    ds = Dataset.from_dict({"audio": [{"bytes": blob, "path": "x.flac"}, {"bytes": b"junk" * 100, "path": "y.wav"}],
                            "key": ["k1", "k2"]}).cast_column("audio", Audio(decode=False))
    utts = read_hf_dataset(ds, id_column="key")
    assert [u.id for u in utts] == ["k1", "k2"] and utts[0].audio is None
    x = decode(utts[0])
    assert abs(dominant_hz(x, SR) - 1000.0) <= 1.0
    with pytest.raises(AudioError, match=r"row 1 \(y.wav\).*cannot decode"):
        decode(utts[1])
    # Shuffled/selected datasets (an indices mapping) fetch the right rows.
    rev = read_hf_dataset(ds.select([1, 0]), id_column="key")
    assert [u.id for u in rev] == ["k2", "k1"] and len(decode(rev[1])) == SR


def test_hf_save_to_disk_round_trip_and_splits(tmp_path):
    from datasets import Audio, Dataset, DatasetDict

    paths = [str(write(tmp_path / "wav" / f"u{i}.wav")) for i in range(3)]
    ds = Dataset.from_dict({"audio": paths, "text": ["a", "b", ""], "id": ["i0", "i1", "i2"]})
    ds = ds.cast_column("audio", Audio())
    ds.save_to_disk(str(tmp_path / "saved"))
    dd = DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    utts = open_data(tmp_path / "saved", require_text=True)
    assert [u.id for u in utts] == ["i0", "i1", "i2"]
    assert utts[0].meta == {"text": "a", "id": "i0"}
    # save_to_disk embeds the audio bytes, so the saved dataset no longer needs the original files.
    for p in paths:
        os.remove(p)
    assert utts[2].skip_reason and "no text" in utts[2].skip_reason
    assert [u.id for u, _ in iter_audio(utts)] == ["i0", "i1"]
    assert [u.id for u in open_data(tmp_path / "saved")] == ["i0", "i1", "i2"]  # stable across runs

    assert [u.id for u in open_data(tmp_path / "dd", split="test")] == ["i2"]
    assert [u.id for u in open_data(dd, split="train")] == ["i0", "i1"]
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]"):
        open_data(tmp_path / "dd")


def test_hf_column_errors():
    from datasets import Dataset

    ds = Dataset.from_dict({"wav": ["/a.wav"], "sentence": ["x"]})
    with pytest.raises(DataError, match="no audio column 'audio'.*audio_column="):
        read_hf_dataset(ds)
    with pytest.raises(DataError, match="no text column 'text'.*text_column=.*label stage"):
        read_hf_dataset(ds, audio_column="wav", require_text=True)
    with pytest.raises(DataError, match="no id column"):
        read_hf_dataset(ds, audio_column="wav", id_column="key")


def test_hf_rows_with_decoder_objects_and_dicts(tmp_path):
    class FakeSamples:
        def __init__(self, data, sr):
            self.data, self.sample_rate = data, sr

    class FakeDecoder:  # the shape of torchcodec's AudioDecoder that we rely on
        def get_all_samples(self):
            return FakeSamples(np.stack([tone(amp=0.2), tone(amp=0.4)]), SR)

    class BrokenDecoder:
        def get_all_samples(self):
            raise RuntimeError("Could not decode stream")

    rows = [{"audio": FakeDecoder(), "text": "dec"},
            {"audio": {"array": list(tone()), "sampling_rate": SR, "path": "clip.wav"}, "text": "arr"},
            {"audio": None, "text": "none"},
            {"audio": BrokenDecoder(), "text": "broken"}]
    utts = read_hf_dataset(rows)
    np.testing.assert_allclose(decode(utts[0]), tone(amp=0.3), atol=1e-4)
    assert len(decode(utts[1])) == SR // 2 and utts[1].duration == pytest.approx(0.5)
    skips = SkipList(None)
    assert [u.text for u, _ in iter_audio(utts, skip_list=skips)] == ["dec", "arr"]
    assert "no audio" in skips.records[0]["reason"]
    assert "row 3: cannot decode (Could not decode stream)" in skips.records[1]["reason"]


# ------------------------------------------------------------------------------------------- dispatch


def test_open_data_dispatch(tmp_path):
    from datasets import Dataset

    a = write(tmp_path / "folder" / "a.wav")
    write(tmp_path / "folder" / "train" / "t.wav")
    m = write_manifest(tmp_path / "m.jsonl", [{"audio": str(a), "text": "x"}])
    assert [u.id for u in open_data(m)] == ["a"]
    assert [u.id for u in open_data(tmp_path / "folder")] == ["a", "t"]
    assert [u.id for u in open_data(tmp_path / "folder", split="train")] == ["t"]
    one = open_data(str(a))
    assert len(one) == 1 and one[0].audio == str(a) and one[0].duration == pytest.approx(0.5)
    assert len(open_data(Dataset.from_dict({"audio": [str(a)]}))) == 1
    with pytest.raises(DataError, match="single audio file has no transcript"):
        open_data(a, require_text=True)
    with pytest.raises(DataError, match="no such file or folder"):
        open_data(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="JSONL manifest") as e:
        open_data(tmp_path / "notes.txt")
    assert str(tmp_path / "notes.txt") in str(e.value)
    with pytest.raises(DataError, match="cannot read data from a int"):
        open_data(3)
    with pytest.raises(DataError, match="HF datasets only"):
        open_data(m, text_column="sentence")
    with pytest.raises(TypeError, match="unexpected keyword"):
        open_data(m, audio_col="x")
