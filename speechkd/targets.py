"""The teacher-target store: a teacher's per-utterance outputs, computed once, read by every training step.

Layer-wise distillation, codebook distillation and LM-to-CTC distillation all train many epochs against the same
teacher outputs; computing the teacher online every step costs more than the student on a CPU. `extract_targets`
runs the teacher once over a data set and writes what the methods need; `TargetStore` reads it back.

Format (documented so that a user can read it without speechkd; see docs/targets.md):

    STORE/store.json                      header: format, kind, teacher, revision, layers, frame_rate_hz,
                                          hidden_size, dtype, fingerprint (sha256 of the rest)
    STORE/shard-r00-00000.safetensors     tensors "<utterance id>/layer<L>": [frames, hidden_size] (fp16 by
                                          default); the header is repeated in the safetensors metadata
    STORE/index-r00.jsonl                 one line per stored utterance: {"id", "shard", "frames", "duration"}
    STORE/skipped.jsonl                   utterances that could not be encoded, with the reason

Exactly once after a kill: a shard is written to a temporary file and renamed when complete, and only then are
its utterances appended to the index (one flushed line each). A reader trusts the index alone, so a shard
renamed but not yet indexed is invisible and is rewritten (same name, atomic replace) on resume; a torn index
line is dropped. Ranks of a `torchrun` job write their own shards and index (`-rNN`), and the reader merges them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch

from speechkd.errors import SpeechkdError
from speechkd.io import JsonlWriter, atomic_write_bytes, atomic_write_json, read_jsonl
from speechkd_runtime.audio import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

FORMAT = "speechkd-targets/1"
HEADER_FILE = "store.json"
SKIPPED_FILE = "skipped.jsonl"
_SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")
_INDEX_RE = re.compile(r"^index-r(\d+)\.jsonl$")
OPEN_SHARDS = 8  # safetensors handles kept open by a reader (memory-mapped; reopening costs a header parse)


class TargetStoreError(SpeechkdError, ValueError):
    """A store that does not fit the run asking for it (another teacher, layer set, revision), or is unreadable."""


class FrameMismatchError(ValueError):
    """A target whose frame count is off from the student's by more than the tolerance (the item is skipped)."""


@dataclass(frozen=True)
class TargetsConfig:
    """`speechkd targets`: which teacher outputs to precompute, and how to store them."""

    teacher: str = "bundled:base"  # Whisper (bundled:NAME, HF dir, Hub id, CTranslate2 dir), HuBERT, wav2vec2, WavLM
    layers: tuple[int, ...] = (-1,)  # teacher layers to store: 0 is the front-end output, -1 (or L) the last layer
    dtype: Literal["float16", "float32"] = "float16"  # storage type of the hidden states (fp16 halves the bytes)
    batch_size: int = 8  # utterances per teacher forward pass
    shard_size: int = 256  # utterances per shard file (one shard is the unit of resume)
    max_duration_s: float | None = 30.0  # longer audio is skipped (Whisper encoders take at most 30 s)
    device: str = "cpu"  # cpu, cuda, cuda:N, mps or auto (torchrun: one GPU per process)
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the teacher's arithmetic (half: GPUs)
    num_shards: int = 1  # > 1: this process extracts every num_shards-th utterance (torchrun sets it)
    shard_id: int = 0  # which share this process extracts, 0..num_shards-1

    def validate(self) -> None:
        if not self.layers:
            raise ValueError("layers is empty: name at least one teacher layer, e.g. --layers 4,-1")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id {self.shard_id} must be in 0..num_shards-1 ({self.num_shards} shards)")


def header_fingerprint(header: dict) -> str:
    keys = ("format", "kind", "teacher", "revision", "layers", "frame_rate_hz", "hidden_size", "dtype", "compute_dtype")
    blob = json.dumps({k: header.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_header(teacher: Any, layers: Sequence[int], dtype: str) -> dict:
    header = {"format": FORMAT, "kind": "hidden", "teacher": teacher.name, "revision": teacher.revision,
              "layers": [int(x) for x in layers], "frame_rate_hz": float(teacher.frame_rate_hz),
              "hidden_size": int(teacher.hidden_size), "num_layers": int(teacher.num_layers), "dtype": dtype,
              "compute_dtype": str(teacher.dtype).removeprefix("torch.")}
    header["fingerprint"] = header_fingerprint(header)
    return header


def tensor_name(utt_id: str, layer: int) -> str:
    return f"{utt_id}/layer{int(layer)}"


# --------------------------------------------------------------------------------------------- writing


def load_target_teacher(spec: str, device: str = "cpu", dtype: str = "float32"):
    """The encoder teacher of a store; a CTranslate2 Whisper dir goes through load_whisper (which converts it)."""
    from speechkd.devices import resolve_device
    from speechkd.teachers.encoders import load_encoder

    where, dtype_ = resolve_device(device), getattr(torch, dtype)
    path = Path(spec)
    if path.is_dir() and (path / "model.bin").is_file() and not (path / "model.safetensors").is_file():
        from speechkd.teachers import load_whisper

        return load_encoder(load_whisper(spec), device=where, dtype=dtype_)
    return load_encoder(spec, device=where, dtype=dtype_)


class _ShardWriter:
    """Collects utterances of one rank into shards; a shard is renamed into place, then indexed."""

    def __init__(self, out: Path, header: dict, rank: int, shard_size: int, dtype: torch.dtype):
        self.out, self.header, self.rank, self.shard_size, self.dtype = out, header, rank, shard_size, dtype
        self.index_path = out / f"index-r{rank:02d}.jsonl"
        done = [r["shard"] for r in read_jsonl(self.index_path)] if self.index_path.exists() else []
        self.next_shard = 1 + max((int(_SHARD_RE.match(s).group(2)) for s in done if _SHARD_RE.match(s)), default=-1)
        self.index = JsonlWriter(self.index_path)
        self.pending: dict[str, torch.Tensor] = {}
        self.rows: list[dict] = []

    def add(self, utt_id: str, hidden: dict[int, torch.Tensor], duration: float) -> None:
        frames = 0
        for layer, h in hidden.items():
            self.pending[tensor_name(utt_id, layer)] = h.detach().to("cpu", self.dtype).contiguous()
            frames = int(h.shape[0])
        self.rows.append({"id": utt_id, "frames": frames, "duration": round(float(duration), 4)})
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        from safetensors.torch import save

        name = f"shard-r{self.rank:02d}-{self.next_shard:05d}.safetensors"
        meta = {"speechkd_targets": json.dumps(self.header)}
        atomic_write_bytes(self.out / name, save(self.pending, metadata=meta))
        for row in self.rows:  # the shard is complete on disk before any of its utterances is indexed
            self.index.write({**row, "shard": name})
        self.next_shard += 1
        self.pending, self.rows = {}, []

    def close(self) -> None:
        self.flush()
        self.index.close()


def extract_targets(cfg: TargetsConfig, data: Any, out_dir: str | os.PathLike, *, teacher: Any = None,
                    progress: bool = True) -> dict:
    """Encode every utterance of `data` once and store the chosen layers; resumes where a killed run stopped.

    Returns a summary: utterances stored now and before, skipped, audio seconds, seconds, bytes on disk.
    """
    import time

    from tqdm.auto import tqdm

    from speechkd.config import save_config
    from speechkd.data import AudioConfig, SkipList, iter_audio, open_data
    from speechkd.label import resolve_shard  # torchrun's RANK/WORLD_SIZE, as labelling shards

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher if teacher is not None else load_target_teacher(cfg.teacher, cfg.device, cfg.compute_dtype)
    from speechkd.teachers.encoders import layer_indices

    layers = layer_indices(list(cfg.layers), teacher.num_layers, teacher.name, TargetStoreError)
    shard_id, num_shards = resolve_shard(cfg)
    header = make_header(teacher, layers, cfg.dtype)
    header_path = out / HEADER_FILE
    if header_path.exists():
        check_header(_read_header(header_path), header, where=str(out))
    else:  # every rank writes the same header; the rename makes that race harmless
        atomic_write_json(header_path, header)
    save_config(cfg, out / f"targets.config.r{shard_id:02d}.yaml")

    utts = open_data(data)
    mine = utts[shard_id::num_shards]
    done = set(read_index(out))
    skips = SkipList(out / SKIPPED_FILE, stage="targets")
    todo = [u for u in mine if u.id not in done and u.id not in skips]
    writer = _ShardWriter(out, header, shard_id, cfg.shard_size, getattr(torch, cfg.dtype))
    audio_cfg = AudioConfig(max_duration_s=cfg.max_duration_s)
    stored, seconds_audio, t0 = 0, 0.0, time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"targets {teacher.name}", unit="utt", disable=None if progress else True)
    try:
        batch: list[tuple[Any, np.ndarray]] = []
        for item in _with_end(iter_audio(todo, audio_cfg, skips)):
            if item is not None:
                batch.append(item)
            if batch and (len(batch) >= cfg.batch_size or item is None):
                stored_now, secs = _encode_batch(teacher, layers, batch, writer, skips)
                stored, seconds_audio = stored + stored_now, seconds_audio + secs
                bar.update(len(batch))
                batch = []
    finally:
        writer.close()
        skips.close()
        bar.close()
    elapsed = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
    summary = {"stored_this_run": stored, "stored_before": len(done), "skipped": len(skips),
               "audio_seconds": round(seconds_audio, 2), "seconds": round(elapsed, 2),
               "audio_seconds_per_second": round(seconds_audio / elapsed, 2) if elapsed > 0 else None,
               "bytes_on_disk": size, "store": str(out), "fingerprint": header["fingerprint"]}
    log.info("targets: %s", summary)
    return summary


def _with_end(items: Iterable) -> Iterable:
    yield from items
    yield None


def _encode_batch(teacher, layers: list[int], batch: list, writer: _ShardWriter, skips) -> tuple[int, float]:
    """Encode a batch; if the batch fails, each item alone, so one bad item is skipped and the others kept."""
    try:
        groups = [(batch, teacher.encode([a for _, a in batch], layers))]
    except ValueError:
        groups = []
        for utt, audio in batch:
            try:
                groups.append(([(utt, audio)], teacher.encode([audio], layers)))
            except ValueError as e:
                skips.add(utt, f"teacher cannot encode it: {e}")
                log.warning("skipping %s: %s", utt.id, e)
    stored, seconds = 0, 0.0
    for items, enc in groups:
        for i, (utt, audio) in enumerate(items):
            n = int(enc.lengths[i])
            writer.add(utt.id, {layer: enc.hidden[layer][i, :n] for layer in layers}, len(audio) / SAMPLE_RATE_HZ)
            stored, seconds = stored + 1, seconds + len(audio) / SAMPLE_RATE_HZ
    return stored, seconds


# --------------------------------------------------------------------------------------------- reading


def _read_header(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TargetStoreError(f"{path}: cannot read the store header ({e}); extract the targets again") from e


def check_header(found: dict, expected: dict, *, where: str) -> None:
    """Refuse a store written for another teacher, revision, layer set or dtype, naming every difference."""
    keys = ("format", "kind", "teacher", "revision", "layers", "frame_rate_hz", "hidden_size", "dtype", "compute_dtype")
    diff = [f"{k}: store has {found.get(k)!r}, asked for {expected.get(k)!r}" for k in keys
            if expected.get(k) is not None and found.get(k) != expected.get(k)]
    if found.get("fingerprint") != header_fingerprint(found):
        diff.append("fingerprint: the header was edited (it no longer matches its own fingerprint)")
    if diff:
        raise TargetStoreError(f"{where}: the target store does not fit ({'; '.join(diff)}); extract targets for "
                               f"this configuration into a new folder (`speechkd targets`)")


def read_index(store_dir: str | os.PathLike) -> dict[str, dict]:
    """id -> {shard, frames, duration} over every rank's index (torn last lines are dropped by read_jsonl)."""
    out: dict[str, dict] = {}
    for path in sorted(Path(store_dir).glob("index-r*.jsonl")):
        if _INDEX_RE.match(path.name):
            for row in read_jsonl(path):
                out[row["id"]] = row
    return out


class TargetStore:
    """Read-only view of a store: `store.get(utt_id, layer)` -> [frames, hidden] tensor (the stored dtype)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / HEADER_FILE).is_file():
            raise TargetStoreError(f"{self.path} is not a target store (no {HEADER_FILE}); make one with "
                                   f"`speechkd targets --data D --out {self.path}`")
        self.header = _read_header(self.path / HEADER_FILE)
        if self.header.get("format") != FORMAT:
            raise TargetStoreError(f"{self.path}: format {self.header.get('format')!r}, this speechkd reads {FORMAT!r}")
        self.index = read_index(self.path)
        self._open: OrderedDict[str, Any] = OrderedDict()

    @property
    def layers(self) -> list[int]:
        return list(self.header["layers"])

    @property
    def frame_rate_hz(self) -> float:
        return float(self.header["frame_rate_hz"])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self.index

    def check(self, *, teacher: str | None = None, layers: Sequence[int] | None = None,
              revision: str | None = None, fingerprint: str | None = None) -> None:
        """Raise TargetStoreError naming each mismatch with what a run expects (None: not checked)."""
        expected = {"teacher": teacher, "layers": list(layers) if layers is not None else None,
                    "revision": revision}
        check_header(self.header, expected, where=str(self.path))
        if fingerprint is not None and fingerprint != self.header.get("fingerprint"):
            raise TargetStoreError(f"{self.path}: fingerprint {self.header.get('fingerprint')} differs from the "
                                   f"run's {fingerprint}; the targets were made by another configuration")

    def get(self, utt_id: str, layer: int) -> torch.Tensor:
        row = self.index.get(utt_id)
        if row is None:
            raise KeyError(f"{utt_id} is not in the target store {self.path}")
        if int(layer) not in self.header["layers"]:
            raise TargetStoreError(f"{self.path} holds layers {self.header['layers']}, not {layer}")
        return self._shard(row["shard"]).get_tensor(tensor_name(utt_id, layer))

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._open:
            if len(self._open) >= OPEN_SHARDS:
                self._open.popitem(last=False)
            self._open[name] = safe_open(str(self.path / name), framework="pt")
        self._open.move_to_end(name)
        return self._open[name]


# --------------------------------------------------------------------------------------------- alignment


def align_frames(target: torch.Tensor, teacher_rate_hz: float, student_rate_hz: float, student_frames: int,
                 tolerance: int = 2) -> torch.Tensor:
    """A [frames, dim] teacher target resampled onto the student's frame grid: [student_frames, dim].

    An integer rate ratio is exact: a teacher k times faster is averaged over each k frames (50 -> 25 frames/s),
    a teacher k times slower is repeated k times; other ratios are interpolated linearly. Convolution edges make
    the counts differ by a frame or two; up to `tolerance` frames are trimmed or padded (edge frame repeated),
    more raises FrameMismatchError, which a caller turns into a skip with that reason.
    """
    t = target.float()
    ratio = teacher_rate_hz / student_rate_hz
    if abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1:
        k = int(round(ratio))
        if k > 1:
            pad = (-t.shape[0]) % k
            if pad:
                t = torch.cat([t, t[-1:].expand(pad, -1)])
            t = t.reshape(-1, k, t.shape[1]).mean(1)
    elif abs(1 / ratio - round(1 / ratio)) < 1e-6:
        t = t.repeat_interleave(int(round(1 / ratio)), dim=0)
    else:
        n = max(1, int(math.floor(t.shape[0] / ratio + 0.5)))
        t = torch.nn.functional.interpolate(t.T[None], size=n, mode="linear", align_corners=False)[0].T
    off = t.shape[0] - student_frames
    if abs(off) > tolerance:
        raise FrameMismatchError(f"teacher target has {target.shape[0]} frames at {teacher_rate_hz:g}/s = {t.shape[0]} "
                                 f"at the student's {student_rate_hz:g}/s, the student has {student_frames} "
                                 f"(tolerance {tolerance})")
    if off > 0:
        t = t[:student_frames]
    elif off < 0:
        t = torch.cat([t, t[-1:].expand(-off, -1)])
    return t.to(target.dtype)
