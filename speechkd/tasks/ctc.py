"""CTC training on teacher pseudo-labels: any registered CTC student, one task.

Labels come from the labels JSONL (`text`, the teacher's pseudo-label; `reference` only if asked with
text_field: reference). Each label is normalised and encoded with the student's vocabulary
(speechkd.vocab: unknown characters are dropped and counted). Items that cannot be trained on are skipped
with a reason in run_dir/skipped.jsonl, never crash the run:
  * no usable label text, or audio outside [min_duration_s, max_duration_s];
  * too short for the label under CTC: a path needs one frame per label plus a blank between repeated
    labels, so a label of S ids with R adjacent repeats needs S + R output frames;
  * audio that fails to decode.
run_dir/ctc_labels.json reports the vocabulary, the dropped characters and the skips by reason.

Augmentation is drawn from an RNG seeded by (train seed, the batch's ids), so collate is a pure function
of its indices and a resumed run sees the same batches: speed perturbation (soxr resampling, one factor
per utterance) and SpecAugment (time masks on every front end, frequency masks on mel front ends).

    method: ctc
    method_config: {text_field: text, vocab: {kind: char}, speed_perturb: [0.9, 1.0, 1.1]}
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speechkd.config import from_dict, to_dict
from speechkd.data import AudioError, SkipList, load_audio
from speechkd.io import atomic_write_json, read_labels
from speechkd.losses import ctc_loss
from speechkd.vocab import OOVStats, VocabConfig, VocabError, Vocabulary, build_vocabulary
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.features import compute_features, pad_batch

log = logging.getLogger(__name__)

REPORT_FILE = "ctc_labels.json"


@dataclass(frozen=True)
class SpecAugmentConfig:
    num_time_masks: int = 2
    max_time_mask: float = 0.05  # widest time mask, as a fraction of the utterance (adapts to length)
    num_freq_masks: int = 2
    max_freq_mask: int = 15  # widest frequency mask in mel bins (mel front ends only)

    def validate(self) -> None:
        if self.num_time_masks < 0 or self.num_freq_masks < 0 or self.max_freq_mask < 0:
            raise ValueError("spec_augment counts and widths must be >= 0")
        if not 0.0 <= self.max_time_mask < 1.0:
            raise ValueError(f"spec_augment.max_time_mask is a fraction in [0, 1), got {self.max_time_mask}")


@dataclass(frozen=True)
class Config:
    text_field: str = "text"  # the labels' pseudo-label; "reference" trains on human transcripts instead
    vocab: VocabConfig = field(default_factory=VocabConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)  # zero masks to disable
    speed_perturb: tuple[float, ...] = ()  # e.g. [0.9, 1.0, 1.1]; empty: off
    min_duration_s: float = 0.2
    max_duration_s: float = 30.0
    eval_batch_size: int = 8

    def validate(self) -> None:
        if not self.text_field:
            raise ValueError("text_field must name a field of the labels records (usually 'text')")
        if any(not 0.5 <= f <= 2.0 for f in self.speed_perturb):
            raise ValueError(f"speed_perturb factors must be in [0.5, 2], got {list(self.speed_perturb)}")
        if not 0 <= self.min_duration_s < self.max_duration_s:
            raise ValueError(f"need 0 <= min_duration_s < max_duration_s, got {self.min_duration_s}, {self.max_duration_s}")
        if self.eval_batch_size < 1:
            raise ValueError("eval_batch_size must be >= 1")


def parse_config(run: Any) -> Config:
    return from_dict(Config, dict(getattr(run, "method_config", None) or {}), where="method_config (ctc)")


def frames_needed(ids: list[int]) -> int:
    """Minimum CTC output frames for a label: one per id plus a blank between equal neighbours."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def make_vocab(run: Any, records: list[dict]) -> Vocabulary:
    """The student's vocabulary, built from the training labels (cfg.text_field) as cfg.vocab says."""
    cfg = parse_config(run)
    texts = [r.get(cfg.text_field) for r in records]
    if not any(isinstance(t, str) and t.strip() for t in texts):
        raise VocabError(f"no record of {getattr(run, 'labels', 'the labels')} has text in field "
                         f"{cfg.text_field!r}; set method_config.text_field to a field the labels have")
    return build_vocabulary([t for t in texts if isinstance(t, str)], cfg.vocab)


@dataclass
class _Item:
    id: str
    audio: str
    ids: list[int]
    duration: float


class CTCTask:
    # Dev WER normalises like `speechkd eval` does for a CTC student by default (English): Config has no
    # language option, and the dev numbers should match an eval of the saved student.
    language = "en"

    def __init__(self, run: Any, run_dir: Path, model, records: list[dict] | None = None):
        self.run = run
        self.run_dir = Path(run_dir)
        self.cfg = parse_config(run)
        core = getattr(model, "module", model)  # DDP-wrapped or not
        self.frontend = dict(core.frontend)
        self.vocab = core.vocab
        self._output_lengths = core.output_lengths
        train = getattr(run, "train", None)
        self.seed = int(getattr(train, "seed", 0) or 0)
        self.skips = SkipList(self.run_dir / "skipped.jsonl", stage="train")
        self.dev_batch_size = self.cfg.eval_batch_size
        if records is None:
            records = read_labels(run.labels)
        self.items, report = self._prepare(records, core)
        atomic_write_json(self.run_dir / REPORT_FILE, report)
        if not self.items:
            raise ValueError(f"no usable training items in {getattr(run, 'labels', 'the labels')}: "
                             f"all were skipped (reasons in {self.skips.path})")

    # --- preparation ---------------------------------------------------------------------------

    def _prepare(self, records: list[dict], core) -> tuple[list[_Item], dict]:
        cfg = self.cfg
        stats = OOVStats()
        reasons: Counter = Counter()
        items: list[_Item] = []

        def skip(rec: dict, reason: str, key: str) -> None:
            reasons[key] += 1
            self.skips.add(str(rec.get("id")), reason, source=rec.get("audio"))

        for rec in records:
            text = rec.get(cfg.text_field)
            if not rec.get("id") or not rec.get("audio"):
                skip(rec, "label record without id or audio", "bad record")
                continue
            if not isinstance(text, str) or not text.strip():
                skip(rec, f"no label text in field {cfg.text_field!r}", "no label")
                continue
            ids = self.vocab.encode(text, stats)
            if not ids:
                skip(rec, "label empty after normalisation / vocabulary", "empty label")
                continue
            duration = rec.get("duration")
            if duration is None:
                duration = _file_duration(rec["audio"])
                if duration is None:
                    skip(rec, "cannot read the audio header", "unreadable audio")
                    continue
            duration = float(duration)
            if not cfg.min_duration_s <= duration <= cfg.max_duration_s:
                skip(rec, f"duration {duration:.2f} s outside [{cfg.min_duration_s}, {cfg.max_duration_s}] s "
                          f"(method_config min_duration_s/max_duration_s)", "duration")
                continue
            have = core.num_output_frames(int(round(duration * SAMPLE_RATE_HZ)))
            if frames_needed(ids) > have:
                skip(rec, _too_short(ids, have), "too short for label")
                continue
            items.append(_Item(str(rec["id"]), rec["audio"], ids, duration))
        oov = stats.to_dict()
        if oov["num_dropped"]:
            top = ", ".join(f"{c!r}x{n}" for c, n in list(oov["dropped_chars"].items())[:10])
            log.warning("ctc: dropped %d out-of-vocabulary characters (%.3f%% of label characters): %s",
                        oov["num_dropped"], 100 * oov["dropped_rate"], top)
        if reasons:
            log.warning("ctc: skipped %d of %d label records: %s", sum(reasons.values()), len(records), dict(reasons))
        report = {"text_field": cfg.text_field, "vocab_kind": self.vocab.kind, "vocab_size": len(self.vocab),
                  "num_records": len(records), "num_items": len(items), "skipped": dict(reasons),
                  "hours": round(sum(i.duration for i in items) / 3600, 4), "out_of_vocabulary": oov}
        return items, report

    # --- the Task protocol -----------------------------------------------------------------------

    def num_items(self) -> int:
        return len(self.items)

    def item_length(self, i: int) -> float:
        return self.items[i].duration

    def collate(self, indices: list[int]) -> dict | None:
        items = [self.items[i] for i in indices]
        key = f"{self.seed}:" + ",".join(it.id for it in items)
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        ids, feats, targets = [], [], []
        for it in items:
            try:
                audio = load_audio(it.audio)
            except AudioError as e:
                self.skips.add(it.id, str(e), source=it.audio)
                continue
            factor = float(rng.choice(self.cfg.speed_perturb)) if self.cfg.speed_perturb else 1.0
            x = self._features(audio, factor)
            if frames_needed(it.ids) > self._frames(x) and factor != 1.0:
                x = self._features(audio, 1.0)  # faster speech left too few frames: use the original
            have = self._frames(x)
            if frames_needed(it.ids) > have:
                self.skips.add(it.id, _too_short(it.ids, have), source=it.audio)
                continue
            feats.append(self._spec_augment(x, rng))
            ids.append(it.id)
            targets.append(it.ids)
        if not feats:
            return None
        x, x_lens = pad_batch(feats)
        target_lens = torch.tensor([len(t) for t in targets], dtype=torch.int64)
        padded = torch.zeros(len(targets), int(target_lens.max()), dtype=torch.int64)
        for b, t in enumerate(targets):
            padded[b, : len(t)] = torch.tensor(t, dtype=torch.int64)
        return {"ids": ids, "x": torch.from_numpy(x), "x_lens": torch.from_numpy(x_lens),
                "targets": padded, "target_lens": target_lens}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        log_probs, out_lens = model(batch["x"], batch["x_lens"])
        loss = ctc_loss(log_probs, out_lens, batch["targets"], batch["target_lens"], blank=self.vocab.blank_id)
        return loss, {"ctc": float(loss.detach())}

    def transcribe(self, model, audios: Sequence[np.ndarray]) -> list[str]:
        from speechkd.students.ctc import CTCRecognizer

        return CTCRecognizer(getattr(model, "module", model), batch_size=self.cfg.eval_batch_size).transcribe(audios)

    def fingerprint(self) -> dict:
        digest = hashlib.sha256()
        for it in self.items:
            digest.update(f"{it.id}\t{it.audio}\t{' '.join(map(str, it.ids))}\n".encode())
        return {"method": "ctc", "config": to_dict(self.cfg), "num_items": len(self.items),
                "items_sha256": digest.hexdigest(), "vocab": list(self.vocab.tokens), "frontend": self.frontend}

    # --- helpers ---------------------------------------------------------------------------------

    def _features(self, audio: np.ndarray, factor: float) -> np.ndarray:
        if factor != 1.0:
            import soxr

            # Speed x factor = play the samples back factor times faster: resample to sr / factor.
            audio = soxr.resample(audio, SAMPLE_RATE_HZ, SAMPLE_RATE_HZ / factor).astype(np.float32)
        return compute_features(self.frontend, audio)

    def _frames(self, x: np.ndarray) -> int:
        return int(self._output_lengths(torch.tensor([len(x)], dtype=torch.int64))[0])

    def _spec_augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sa = self.cfg.spec_augment
        if not (sa.num_time_masks or sa.num_freq_masks) or len(x) == 0:
            return x
        x = x.copy()
        fill = float(x.mean())  # the utterance mean: a masked stretch looks like "nothing", not silence floor
        width = int(sa.max_time_mask * len(x))
        for _ in range(sa.num_time_masks if width > 0 else 0):
            w = int(rng.integers(0, width + 1))
            start = int(rng.integers(0, len(x) - w + 1))
            x[start:start + w] = fill
        if x.ndim == 2:
            for _ in range(sa.num_freq_masks):
                w = int(rng.integers(0, min(sa.max_freq_mask, x.shape[1]) + 1))
                start = int(rng.integers(0, x.shape[1] - w + 1))
                x[:, start:start + w] = fill
        return x


def _too_short(ids: list[int], have: int) -> str:
    return (f"too short for its label under CTC: {len(ids)} labels need {frames_needed(ids)} output frames, "
            f"the audio gives {have}")


def _file_duration(path: str) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - reported as a skip reason
        return None


def build(run: Any, run_dir: Path, model) -> CTCTask:
    return CTCTask(run, run_dir, model)
