"""Layer-wise distillation from a teacher-target store: student layers regress onto teacher layers.

DistilHuBERT (Chang et al. 2022) puts one prediction head per teacher layer on the student's last layer;
layer-to-layer distillation (DPHuBERT, FitNets) maps each chosen student layer onto one teacher layer. Both are
`student_layers` here: one entry (the last layer, by default) feeds every head, or one entry per teacher layer.
The heads (a linear map from the student's width to the teacher's) belong to this method: the training loop
optimises and checkpoints them with the student and leaves them out of `final/` and of every export.

Targets come from a store made once by `speechkd targets` (speechkd.targets), checked against the run's teacher
and this config's teacher layers, so the loop never runs the teacher; with `targets` unset the teacher runs
online in `collate` instead (the same targets, at the teacher's cost every step). No text is needed: `labels` may be any audio manifest, folder or
saved dataset. Items are skipped with a reason (run_dir/skipped.jsonl) when their audio is missing from the
store, cannot be decoded, or has a frame count off from the student's by more than `frame_tolerance` frames.

    method: layerwise
    method_config: {targets: exp/targets/base, teacher_layers: [3, 6], student_layers: [-1]}
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechkd.config import from_dict, to_dict
from speechkd.data import AudioError, SkipList, load_audio
from speechkd.losses import hidden_state_loss
from speechkd.targets import FrameMismatchError, TargetStore, align_frames
from speechkd.teachers.encoders import layer_indices
from speechkd.vocab import build_vocabulary
from speechkd_runtime.features import compute_features, pad_batch

log = logging.getLogger(__name__)

# A CTC student needs a vocabulary for its (here untrained) head; without label text, English characters.
FALLBACK_ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


@dataclass(frozen=True)
class Config:
    targets: str = ""  # target store made by `speechkd targets` for the run's teacher; "": run the teacher online
    teacher_layers: tuple[int, ...] = ()  # teacher layers to predict; () = every stored layer (online: the last)
    student_layers: tuple[int, ...] = (-1,)  # one (feeds every head, DistilHuBERT) or one per teacher layer
    cosine_weight: float = 1.0  # weight of -log sigmoid(cos) beside the L1 term (DistilHuBERT: 1)
    frame_tolerance: int = 2  # student/teacher frame counts may differ by this much after rate alignment
    min_duration_s: float = 0.2
    max_duration_s: float = 30.0

    def validate(self) -> None:
        if not self.student_layers:
            raise ValueError("student_layers must name at least one student layer (-1: the last)")
        if self.teacher_layers and len(self.student_layers) not in (1, len(self.teacher_layers)):
            raise ValueError(f"student_layers has {len(self.student_layers)} entries: give one, or one per teacher "
                             f"layer ({len(self.teacher_layers)})")
        if self.cosine_weight < 0 or self.frame_tolerance < 0:
            raise ValueError("cosine_weight and frame_tolerance must be >= 0")
        if not 0 <= self.min_duration_s < self.max_duration_s:
            raise ValueError("need 0 <= min_duration_s < max_duration_s")


def parse_config(run: Any) -> Config:
    return from_dict(Config, dict(getattr(run, "method_config", None) or {}), where="method_config (layerwise)")


def read_records(run: Any) -> list[dict]:
    """The run's audio: any manifest, audio folder or saved dataset (text, if present, is ignored)."""
    from speechkd.data import open_data

    return [u.to_record() for u in open_data(run.labels)]


def make_vocab(run: Any, records: list[dict]):
    texts = [r["text"] for r in records if isinstance(r.get("text"), str) and r["text"].strip()]
    return build_vocabulary(texts or [FALLBACK_ALPHABET])


class LayerwiseTask:
    def __init__(self, run: Any, run_dir: Path, model, records: list[dict]):
        self.cfg = cfg = parse_config(run)
        self.run_dir = Path(run_dir)
        core = getattr(model, "module", model)
        if not hasattr(core, "hidden_states"):
            raise ValueError(f"student type {run.student_type} does not expose its layers; layerwise distillation "
                             f"needs a CTC student (conformer_ctc, transformer_ctc, whisper_encoder_ctc, wav2vec2_ctc)")
        if cfg.targets:
            self.store, self.teacher = TargetStore(cfg.targets), None
            self.store.check(teacher=run.teacher)
            teacher_layers = (layer_indices(list(cfg.teacher_layers), int(self.store.header["num_layers"]), run.teacher)
                              if cfg.teacher_layers else self.store.layers)
            available, teacher_dim, self.teacher_rate = (self.store.layers, int(self.store.header["hidden_size"]),
                                                         self.store.frame_rate_hz)
        else:
            from speechkd.targets import load_target_teacher

            self.store, self.teacher = None, load_target_teacher(run.teacher)
            teacher_layers = layer_indices(list(cfg.teacher_layers or (-1,)), self.teacher.num_layers, run.teacher)
            available, teacher_dim, self.teacher_rate = (teacher_layers, self.teacher.hidden_size,
                                                         self.teacher.frame_rate_hz)
        missing = [t for t in teacher_layers if t not in available]
        if missing:
            raise ValueError(f"teacher layers {missing} are not in the target store {cfg.targets} (it holds "
                             f"{available}); extract them with `speechkd targets --layers ...`")
        student_layers = layer_indices(list(cfg.student_layers), core.num_layers, run.student_type)
        if len(cfg.student_layers) == 1:
            student_layers = student_layers * len(teacher_layers)
        self.pairs = list(zip(student_layers, teacher_layers))
        self.heads = nn.ModuleDict({f"t{t}": nn.Linear(core.hidden_size, teacher_dim) for _, t in self.pairs})
        self.frontend = dict(core.frontend)
        self._output_lengths = core.output_lengths
        self.student_rate = core.frame_rate_hz
        self.skips = SkipList(self.run_dir / "skipped.jsonl", stage="train")
        self.items = self._prepare(records)
        if not self.items:
            raise ValueError(f"no usable training items in {run.labels} (reasons in {self.skips.path})")
        log.info("layerwise: %d items, student->teacher layers %s, teacher %s (%s frames/s, %s) -> student "
                 "%s frames/s", len(self.items), self.pairs, run.teacher, self.teacher_rate,
                 f"store {cfg.targets}" if self.store else "online", self.student_rate)

    def _prepare(self, records: list[dict]) -> list[dict]:
        items = []
        for rec in records:
            uid, audio = str(rec.get("id")), rec.get("audio")
            if self.store is not None and uid not in self.store:
                self.skips.add(uid, f"not in the target store {self.cfg.targets}; run `speechkd targets` on this "
                                    f"data (it resumes)", source=audio)
                continue
            duration = self.store.index[uid]["duration"] if self.store is not None else rec.get("duration")
            if duration is None:
                duration = _file_duration(audio)
            if duration is None or not self.cfg.min_duration_s <= duration <= self.cfg.max_duration_s:
                self.skips.add(uid, f"duration {duration} s unreadable or outside [{self.cfg.min_duration_s}, "
                                    f"{self.cfg.max_duration_s}] s", source=audio)
                continue
            items.append({"id": uid, "audio": audio, "duration": float(duration)})
        return items

    # --- the Task protocol -----------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules of the method (optimised and checkpointed with the student, never exported)."""
        return {"heads": self.heads}

    def num_items(self) -> int:
        return len(self.items)

    def item_length(self, i: int) -> float:
        return self.items[i]["duration"]

    def collate(self, indices: list[int]) -> dict | None:
        loaded = []
        for it in (self.items[i] for i in indices):
            try:
                loaded.append((it, load_audio(it["audio"])))
            except AudioError as e:
                self.skips.add(it["id"], str(e), source=it["audio"])
        layers = sorted({t for _, t in self.pairs})
        if self.teacher is not None and loaded:
            enc = self.teacher.encode([audio for _, audio in loaded], layers)
            online = [{t: enc.hidden[t][b, : int(enc.lengths[b])] for t in layers} for b in range(len(loaded))]
        ids, feats, targets = [], [], []
        for b, (it, audio) in enumerate(loaded):
            x = compute_features(self.frontend, audio)
            frames = int(self._output_lengths(torch.tensor([len(x)], dtype=torch.int64))[0])
            raw = online[b] if self.teacher is not None else {t: self.store.get(it["id"], t) for t in layers}
            try:
                per_layer = {t: align_frames(raw[t], self.teacher_rate, self.student_rate, frames,
                                             self.cfg.frame_tolerance) for t in layers}
            except FrameMismatchError as e:
                self.skips.add(it["id"], str(e), source=it["audio"])
                continue
            ids.append(it["id"])
            feats.append(x)
            targets.append(per_layer)
        if not feats:
            return None
        x, x_lens = pad_batch(feats)
        width = max(per_layer[layers[0]].shape[0] for per_layer in targets)
        stacked = {}
        for t in layers:
            out = torch.zeros(len(targets), width, targets[0][t].shape[1], dtype=torch.float32)
            for b, per_layer in enumerate(targets):
                out[b, : per_layer[t].shape[0]] = per_layer[t].float()
            stacked[t] = out
        return {"ids": ids, "x": torch.from_numpy(x), "x_lens": torch.from_numpy(x_lens), "targets": stacked}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        core = getattr(model, "module", model)
        hidden, lens = core.hidden_states(batch["x"], batch["x_lens"], sorted({s for s, _ in self.pairs}))
        total, logs = 0.0, {}
        for s, t in self.pairs:
            target = batch["targets"][t]
            pred = self.heads[f"t{t}"](hidden[s])[:, : target.shape[1]]
            mask = torch.arange(target.shape[1], device=lens.device)[None, :] < lens[:, None]
            term = hidden_state_loss(pred, target, mask, self.cfg.cosine_weight)
            logs[f"layer{t}"] = float(term.detach())
            total = total + term
        return total / len(self.pairs), logs

    def fingerprint(self) -> dict:
        digest = hashlib.sha256("\n".join(f"{it['id']}\t{it['audio']}" for it in self.items).encode())
        return {"method": "layerwise", "config": to_dict(self.cfg), "num_items": len(self.items),
                "items_sha256": digest.hexdigest(), "pairs": self.pairs,
                "store": self.store.header["fingerprint"] if self.store is not None else "online"}


def _file_duration(path: str | None) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - reported as a skip reason
        return None


def build(run: Any, run_dir: Path, model, records: list[dict] | None = None) -> LayerwiseTask:
    return LayerwiseTask(run, run_dir, model, records if records is not None else read_records(run))
