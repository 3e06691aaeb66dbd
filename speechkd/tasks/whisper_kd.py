"""Distil-Whisper: a Whisper student learns the teacher's pseudo-labels (CE) and its token distributions (KL).

Training items are 30-s windows of concatenated clips, as in Distil-Whisper's training data: one
encoder pass then covers several utterances instead of one utterance plus ~25 s of padding, which is
the dominant cost on a CPU. A window's target is its clips' pseudo-labels in order, either plain
(<|notimestamps|>) or, with probability `timestamp_probability`, as timestamped segments: the packing
plan knows where each clip sits in the window, so segment times are exact rather than predicted.

When the student keeps the teacher's encoder frozen (the Distil-Whisper default: fewer decoder layers,
full encoder), teacher and student share the encoder output; it is computed once per window, cached on
disk and reused by every later epoch instead of being recomputed each step. A student with its own
frozen encoder (one started from a smaller pretrained Whisper) has its output cached the same way.

A student whose tokenizer differs from the teacher's (English-only tiny.en under multilingual base:
another BPE) learns the pseudo-labels in its own tokens, i.e. sequence-level distillation (Kim & Rush,
2016); token-level KL needs one vocabulary and is refused for such a pair.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from speechkd.config import from_dict
from speechkd.data import AudioError, SkipList, decode, open_data
from speechkd.losses import IGNORE_INDEX, distillation_loss, hidden_state_loss
from speechkd.packing import WINDOW_SECONDS, Window, pack_windows
from speechkd_runtime.audio import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

TIMESTAMP_SECONDS = 0.02  # Whisper's timestamp token resolution
CACHE_DIR = "encoder_cache"


@dataclass(frozen=True)
class Config:
    ce_weight: float = 0.8  # Distil-Whisper's weights
    kl_weight: float = 1.0
    temperature: float = 2.0
    freeze_encoder: bool | None = None  # None: freeze exactly when the student keeps the teacher's whole encoder
    cache_encoder: bool = True  # cache frozen encoders' outputs (the teacher's; a frozen student's) per window
    # Where: None = <run>/encoder_cache. Entries are keyed by the encoder (the teacher's revision, or a hash of a
    # student's weights) + window contents, so runs on the same labels can share one folder safely.
    cache_dir: str | None = None
    encoder_loss_weight: float = 0.0  # > 0: also match the teacher's encoder output (students with fewer encoder layers)
    timestamp_probability: float = 0.2  # share of windows trained with timestamp targets
    pack: bool = True  # concatenate clips into windows of up to 30 s
    # Share of utterances (picked by a hash of their id) trained alone in their window rather than packed: a
    # student that only ever sees packed windows learns to keep talking after a short clip has ended.
    single_clip_fraction: float = 0.0
    gap_seconds: float = 1.0
    max_pieces: int = 12
    text_field: Literal["text", "reference"] = "text"  # "reference" trains on references (supervised baseline)
    language: str | None = "en"
    dev_batch_size: int = 8

    def validate(self) -> None:
        if not 0.0 <= self.timestamp_probability <= 1.0:
            raise ValueError("timestamp_probability must be in [0, 1]")
        if not 0.0 <= self.single_clip_fraction <= 1.0:
            raise ValueError("single_clip_fraction must be in [0, 1]")
        if self.temperature <= 0 or self.ce_weight < 0 or self.kl_weight < 0:
            raise ValueError("temperature must be > 0 and the loss weights >= 0")
        if self.ce_weight == 0 and self.kl_weight == 0:
            raise ValueError("ce_weight and kl_weight are both 0: nothing to learn from")


class WhisperKDTask:
    def __init__(self, cfg: Config, run, run_dir: Path, model):
        from speechkd.students.whisper import PROCESSOR_ATTR, teacher_from_model
        from speechkd.teachers import load_whisper

        self.cfg, self.run, self.run_dir = cfg, run, Path(run_dir)
        self.dev_batch_size, self.language = cfg.dev_batch_size, cfg.language
        self.teacher = load_whisper(run.teacher)
        # Targets, prompts and features are the student's: they differ from the teacher's when the student
        # starts from another pretrained Whisper (an English-only tiny.en under a multilingual base).
        self.student_io = teacher_from_model(model, getattr(model, PROCESSOR_ATTR), "student")
        self.same_vocab = check_compatible(model, self.student_io.tokenizer, self.teacher, cfg)
        same_width = model.config.d_model == self.teacher.config.d_model
        learns_teacher_outputs = cfg.kl_weight > 0 or cfg.encoder_loss_weight > 0
        # A student of the teacher's width may share its encoder (checked below): load the teacher to know.
        self.teacher_model = self.teacher.model.eval() if learns_teacher_outputs or same_width else None
        if self.teacher_model is not None:
            for p in self.teacher_model.parameters():
                p.requires_grad_(False)
        self.shared_encoder = same_width and encoders_equal(model, self.teacher_model)
        freeze = self.shared_encoder if cfg.freeze_encoder is None else cfg.freeze_encoder
        if freeze:
            for p in model.model.encoder.parameters():
                p.requires_grad_(False)
        # A frozen encoder gives a window the same output every epoch: it is computed once and cached. The
        # teacher's stands in for the student's when the two are equal and stay equal (frozen).
        self.use_cache_for_student = self.shared_encoder and freeze
        self.cache_student = freeze and not self.shared_encoder and cfg.cache_encoder
        self.needs_teacher_encoder = self.use_cache_for_student or learns_teacher_outputs
        self._encoders = {}  # who -> (cache tag, encoder, feature function) of the encoders whose output is cached
        if self.teacher_model is not None:
            self._encoders["teacher"] = (self.teacher.revision, self.teacher_model.model.encoder, self.teacher.features)
        if self.cache_student:
            self._encoders["student"] = (weights_fingerprint(model.model.encoder), model.model.encoder,
                                         self.student_io.features)
        self.skips = SkipList(self.run_dir / "skipped.jsonl", stage="train")
        self.windows, self.utts = self._plan()
        gen = model.generation_config
        self.eot = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
        self.no_timestamps = gen.no_timestamps_token_id
        self.timestamp_begin = self.no_timestamps + 1  # HF Whisper convention: timestamps follow <|notimestamps|>
        prompt = self.student_io.prompt_ids(cfg.language if self.student_io.is_multilingual else None)
        self.prompt = prompt[:-1]  # without <|notimestamps|>, which is added per window
        self.max_target = model.config.max_target_positions
        self._warned_truncation = False
        log.info("whisper_kd: %d windows from %d utterances; encoder %s; cache %s; %s", len(self.windows),
                 len(self.utts), "shared+frozen" if self.use_cache_for_student else ("frozen" if freeze else "trained"),
                 "on" if cfg.cache_encoder else "off",
                 "token-level KD (teacher's vocabulary)" if self.same_vocab else
                 "sequence-level KD (pseudo-labels only: the student's tokenizer differs from the teacher's)")

    # ------------------------------------------------------------------ data
    def _plan(self):
        utts = open_data(self.run.labels)
        keep, lengths = [], []
        for u in utts:
            text = u.text if self.cfg.text_field == "text" else u.meta.get("reference")
            if text is None:
                raise ValueError(f"{self.run.labels}: record {u.id} has no '{self.cfg.text_field}' field")
            seconds = u.duration if u.duration is not None else u.meta.get("duration")
            if seconds is None:
                self.skips.add(u, "no duration in the label record; relabel with `speechkd label`")
                continue
            if seconds > WINDOW_SECONDS - 0.5:
                self.skips.add(u, f"{seconds:.1f} s is longer than a Whisper window; train on chunked audio")
                continue
            u.text = text.strip()
            keep.append(u)
            lengths.append(int(round(seconds * SAMPLE_RATE_HZ)))
        if not keep:
            raise ValueError(f"{self.run.labels}: no usable training utterance (see {self.skips.path})")
        alone = [unit_hash(u.id) < self.cfg.single_clip_fraction for u in keep]
        windows = []
        for solo in (False, True):
            idx = [i for i, a in enumerate(alone) if a == solo]
            part = pack_windows([lengths[i] for i in idx], [keep[i].id for i in idx], sample_rate=SAMPLE_RATE_HZ,
                                pack=self.cfg.pack and not solo, gap_seconds=self.cfg.gap_seconds,
                                max_pieces=self.cfg.max_pieces)
            windows += [Window(tuple(replace(p, utt=idx[p.utt]) for p in w.pieces)) for w in part]
        # Order windows by their first utterance id so the item order does not depend on the packer's internals.
        windows.sort(key=lambda w: keep[w.pieces[0].utt].id)
        return windows, keep

    def num_items(self) -> int:
        return len(self.windows)

    def item_length(self, i: int) -> float:
        return self.windows[i].length / SAMPLE_RATE_HZ

    def fingerprint(self) -> dict:
        ids = "\n".join(",".join(self.utts[p.utt].id for p in w.pieces) for w in self.windows)
        return {"windows": len(self.windows), "plan_sha1": hashlib.sha1(ids.encode()).hexdigest(),
                "teacher": f"{self.teacher.name}@{self.teacher.revision}"}

    def _window(self, i: int) -> tuple[np.ndarray, list[tuple[str, float, float]], str]:
        """Assemble window i from the audio that decodes; returns samples, (text, start_s, end_s) per clip, key."""
        gap = int(self.cfg.gap_seconds * SAMPLE_RATE_HZ)
        limit = int((WINDOW_SECONDS - 0.5) * SAMPLE_RATE_HZ)
        parts, segments, offset, ids = [], [], 0, []
        for piece in self.windows[i].pieces:
            u = self.utts[piece.utt]
            if u.id in self.skips:
                continue
            try:
                audio = decode(u)
            except AudioError as e:
                self.skips.add(u, str(e))
                continue
            if offset + len(audio) > limit:  # header duration was short of the decoded length; keep the window valid
                self.skips.add(u, "does not fit its training window (decoded length differs from the label's duration)")
                continue
            if parts:
                parts.append(np.zeros(gap, np.float32))
                offset += gap
            parts.append(audio)
            segments.append((u.text, offset / SAMPLE_RATE_HZ, (offset + len(audio)) / SAMPLE_RATE_HZ))
            offset += len(audio)
            ids.append(u.id)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples, segments, ",".join(ids)

    def _targets(self, segments: list[tuple[str, float, float]], timestamps: bool) -> list[int]:
        tok = self.student_io.tokenizer
        seq = list(self.prompt) + ([] if timestamps else [self.no_timestamps])
        for text, start, end in segments:
            ids = tok.encode(" " + text, add_special_tokens=False) if text else []
            if timestamps:
                seq += [self._timestamp(start), *ids, self._timestamp(end)]
            else:
                seq += ids
        seq.append(self.eot)
        if len(seq) > self.max_target + 1:
            if not self._warned_truncation:
                log.warning("a training window's target (%d tokens) exceeds the decoder's %d positions; truncated "
                            "(lower method_config.max_pieces to pack fewer clips per window)", len(seq), self.max_target)
                self._warned_truncation = True
            seq = seq[: self.max_target] + [self.eot]
        return seq

    def _timestamp(self, seconds: float) -> int:
        return self.timestamp_begin + int(round(min(seconds, WINDOW_SECONDS) / TIMESTAMP_SECONDS))

    def _encoder_output(self, key: str, samples: np.ndarray, who: str = "teacher") -> torch.Tensor:
        """The frozen `who` encoder's output for a window, from the cache when it was computed before."""
        tag, encoder, features = self._encoders[who]
        root = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.run_dir / CACHE_DIR
        cache = root / (hashlib.sha1(f"{tag}|{key}".encode()).hexdigest() + ".npy")
        if self.cfg.cache_encoder and cache.is_file():
            return torch.from_numpy(np.load(cache).astype(np.float32))
        with torch.inference_mode():
            hidden = encoder(torch.from_numpy(features([samples]))).last_hidden_state[0]
        if self.cfg.cache_encoder:
            # fp16 halves the cache; a cached window is always read back rounded, whichever epoch first saw it.
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, hidden.numpy().astype(np.float16))
            tmp.replace(cache)
            return torch.from_numpy(hidden.numpy().astype(np.float16).astype(np.float32))
        return hidden.clone()

    def collate(self, indices: list[int]) -> dict | None:
        rows = []
        for i in indices:
            samples, segments, key = self._window(i)
            if not segments:
                continue
            timestamps = bool(np.random.random() < self.cfg.timestamp_probability)
            seq = self._targets(segments, timestamps)
            hidden = self._encoder_output(key, samples) if self.needs_teacher_encoder else None
            if self.use_cache_for_student:
                student = hidden
            elif self.cache_student:
                student = self._encoder_output(key, samples, "student")
            else:  # the student's encoder runs in the step: it gets features
                student = self.student_io.features([samples])[0]
            rows.append((key, seq, hidden, student))
        if not rows:
            return None
        length = max(len(seq) for _, seq, _, _ in rows) - 1
        inputs = torch.full((len(rows), length), self.eot, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for r, (_, seq, _, _) in enumerate(rows):
            n = len(seq) - 1
            inputs[r, :n] = torch.tensor(seq[:-1])
            labels[r, :n] = torch.tensor(seq[1:])
            labels[r, : len(self.prompt) - 1] = IGNORE_INDEX  # the forced prompt is not something to learn
        batch = {"ids": [k for k, _, _, _ in rows], "decoder_input_ids": inputs, "labels": labels}
        if rows[0][2] is not None:
            batch["encoder_hidden"] = torch.stack([h for _, _, h, _ in rows])
        students = [s for _, _, _, s in rows]
        if isinstance(students[0], torch.Tensor):
            batch["student_hidden"] = torch.stack(students)
        else:
            batch["input_features"] = torch.from_numpy(np.stack(students))
        return batch

    # ------------------------------------------------------------------ loss and transcription
    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        encoder_loss = None
        if "student_hidden" in batch:  # a frozen encoder's output, computed once per window
            hidden = batch["student_hidden"]
        else:
            hidden = model.model.encoder(batch["input_features"]).last_hidden_state
            if self.cfg.encoder_loss_weight > 0:
                frames = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
                encoder_loss = hidden_state_loss(hidden, batch["encoder_hidden"], frames)
        out = model(encoder_outputs=(hidden,), decoder_input_ids=batch["decoder_input_ids"])
        teacher_logits = None
        if self.cfg.kl_weight > 0:
            with torch.no_grad():
                teacher_logits = self.teacher_model(encoder_outputs=(batch["encoder_hidden"],),
                                                    decoder_input_ids=batch["decoder_input_ids"]).logits
        loss, logs = distillation_loss(out.logits, teacher_logits, batch["labels"], ce_weight=self.cfg.ce_weight,
                                       kl_weight=self.cfg.kl_weight, temperature=self.cfg.temperature)
        if encoder_loss is not None:
            logs["encoder"] = float(encoder_loss.detach())
            loss = loss + self.cfg.encoder_loss_weight * encoder_loss
        return loss, logs

    def to(self, device: torch.device) -> None:
        """The teacher's decoder runs in the loss (KL), beside the student; its encoder stays on the CPU, where
        collate computes (and caches) encoder outputs, also in data-loader workers."""
        if self.teacher_model is not None:
            self.teacher_model.model.decoder.to(device)
            self.teacher_model.proj_out.to(device)

    def transcribe(self, model, audios: Sequence[np.ndarray]) -> list[str]:
        from speechkd.students import student_recognizer

        rec = student_recognizer(model, batch_size=self.cfg.dev_batch_size, language=self.cfg.language)
        return rec.transcribe(audios)


def check_compatible(student, student_tokenizer, teacher, cfg: Config) -> bool:
    """Refuse, before any work, a student that cannot learn from this teacher the way `cfg` asks.

    Returns whether the two share a vocabulary (token-level KD possible); a student with its own
    tokenizer can still learn the teacher's pseudo-labels (sequence-level KD, kl_weight 0).
    """
    from speechkd.students.whisper import vocab_difference

    s, t = student.config, teacher.config
    problem = vocab_difference(t, teacher.tokenizer, s, student_tokenizer)
    if problem and cfg.kl_weight > 0:
        raise ValueError(f"the student's tokenizer differs from teacher {teacher.name}'s ({problem}), so their token "
                         "distributions cannot be compared: set "
                         "method_config.kl_weight: 0 (learn from the pseudo-labels only), or create the student "
                         "from this teacher (`speechkd student create`)")
    if cfg.encoder_loss_weight > 0 and (s.num_mel_bins != t.num_mel_bins or s.d_model != t.d_model):
        raise ValueError(f"encoder_loss_weight > 0 needs the student's encoder output to match teacher "
                         f"{teacher.name}'s in width (student d_model {s.d_model}, {s.num_mel_bins} mels; teacher "
                         f"{t.d_model}, {t.num_mel_bins}); set encoder_loss_weight: 0 for this student")
    return problem is None


def encoders_equal(student, teacher) -> bool:
    """True when the student's encoder is the teacher's (same layers, same weights): then outputs can be shared."""
    a, b = student.model.encoder.state_dict(), teacher.model.encoder.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def build(run, run_dir: Path, model) -> WhisperKDTask:
    return WhisperKDTask(from_dict(Config, run.method_config, where="method_config"), run, run_dir, model)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha1 of a module's parameter names and bytes: a cache tag that changes whenever the weights do."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def unit_hash(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for `key` (independent of order, process and seed)."""
    return int.from_bytes(hashlib.sha1(f"single-clip:{key}".encode()).digest()[:8], "big") / 2.0**64
