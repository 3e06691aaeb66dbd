"""Pseudo-labelling: unlabelled audio in, one scored transcript per utterance out (Distil-Whisper step 1).

`pseudo_label` is a generator of records; `run_label` is the job around it (the `speechkd label`
command): it shards the input, resumes from what a killed run already wrote, writes JSONL that is
flushed record by record, merges shards, and summarises.

How work is planned, and why it resumes exactly: utterances are sorted into a fixed plan of windows
(several short clips packed into one 30-s window, see `speechkd.packing`) and fixed batches of
windows, computed from the shard's full utterance list only. A resumed run rebuilds the same plan,
skips batches whose utterances are all written, and re-decodes a partly written batch in full while
emitting only its missing records, so every id appears once with the content an uninterrupted run
would have given.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from speechkd.config import save_config, to_dict
from speechkd.data import AudioConfig, AudioError, SkipList, Utterance, decode, open_data
from speechkd.io import JsonlWriter, OutputPaths, atomic_directory, atomic_write_json, read_jsonl, write_jsonl
from speechkd.packing import WINDOW_SECONDS, Piece, Window, assign_tokens, pack_windows, split_long
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.guards import WhisperGuards, compression_ratio
from speechkd.errors import SpeechkdError

log = logging.getLogger(__name__)

LABEL_FIELDS = ("text", "tokens", "avg_logprob", "mean_entropy", "no_speech_prob", "compression_ratio",
                "n_tokens", "duration", "teacher", "language", "packed", "guard", "hypotheses", "reference")
PACK_ROUNDS = 2  # packed decoding rounds before leftovers are decoded one by one
SHARD_WAIT_SECONDS = 6 * 3600  # rank 0 waits this long for the other shards before giving up on merging
SHARD_POLL_SECONDS = 2.0


class LabelError(SpeechkdError, RuntimeError):
    """A labelling job that cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class LabelConfig:
    teacher: str = "bundled:tiny.en"  # bundled:tiny.en|bundled:base, a Hub id, an HF dir or a CTranslate2 dir
    backend: Literal["ctranslate2", "transformers"] = "ctranslate2"  # ctranslate2 is the faster on CPU
    batch_size: int = 8  # windows per decoder call
    language: str | None = "en"  # None: detect per window (multilingual teachers)
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: English text from any language
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # transformers backend (half types: GPUs)
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (both backends; torchrun: one GPU per process)
    compute_type: str = "default"  # ctranslate2 backend: default | int8 | float32 | int8_float32 ...
    pack: bool = True  # pack short utterances into shared 30-s windows (the main speed lever)
    pack_gap_s: float = 1.0  # silence between packed utterances
    max_pack: int = 12  # at most this many utterances in one window
    num_samples: int = 0  # extra hypotheses sampled at sample_temperature (for agreement filters)
    sample_temperature: float = 0.7  # temperature of those extra hypotheses
    seed: int = 0  # sampling is reproducible under this seed
    num_threads: int = 0  # 0: library default
    max_duration_s: float | None = None  # skip longer audio; None: transcribe long audio completely
    num_shards: int = 1  # > 1: this process labels every num_shards-th utterance (torchrun sets it)
    shard_id: int = 0  # which shard this process labels, 0..num_shards-1
    # Hallucination guards (temperature fallback, duration budget, repetition rule): every record says which
    # acted under `guard`; `guards: {enabled: false}` is raw greedy decoding.
    guards: WhisperGuards = field(default_factory=WhisperGuards)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id={self.shard_id} must be in [0, num_shards={self.num_shards})")
        if self.num_samples < 0 or self.sample_temperature <= 0:
            raise ValueError("num_samples must be >= 0 and sample_temperature > 0")
        if self.pack_gap_s < 0.3:
            raise ValueError("pack_gap_s below 0.3 s makes packed utterances hard to split apart; use >= 0.3")
        if self.max_pack < 1:
            raise ValueError("max_pack must be >= 1")
        if self.backend == "transformers" and self.compute_type != "default":
            raise ValueError("compute_type applies to the ctranslate2 backend; use dtype for transformers")

    def fingerprint(self) -> dict:
        """Everything that changes record content; a resume into output made otherwise is refused."""
        d = to_dict(self)
        for k in ("num_threads", "shard_id", "max_duration_s"):
            d.pop(k)
        return d


# ----------------------------------------------------------------------------------------- engine


@dataclass
class _Piece:
    """Decoded tokens and statistics that belong to one utterance (a packed slice or a long chunk)."""

    ids: list[int]
    logprobs: list[float]
    entropies: list[float]
    eot_logprob: float
    no_speech_prob: float
    samples: list[list[int]]
    language: str | None
    guard: dict  # GuardedResult.record() of the decode it came from


def _slice(result, assignment: list[int] | None, k: int, sample_assignments) -> _Piece:
    best = result.best
    if assignment is None:
        idx = list(range(len(best.ids)))
    else:
        idx = [t for t, a in enumerate(assignment) if a == k]
    samples = []
    for hyp, sa in zip(result.samples, sample_assignments or [None] * len(result.samples)):
        samples.append(hyp.ids if sa is None else [i for i, a in zip(hyp.ids, sa) if a == k])
    return _Piece(
        ids=[best.ids[t] for t in idx],
        logprobs=[best.logprobs[t] for t in idx],
        entropies=[best.entropies[t] for t in idx],
        eot_logprob=best.eot_logprob,
        no_speech_prob=result.no_speech_prob,
        samples=samples,
        language=result.language,
        guard=result.guard.record(),
    )


class Labeller:
    """Turns utterances into label records with one teacher and one config."""

    def __init__(self, teacher, cfg: LabelConfig):
        from speechkd.decoding import ScoredDecoder

        self.teacher = teacher
        self.cfg = cfg
        self.decoder = ScoredDecoder(teacher, cfg.backend, language=cfg.language, task=cfg.task,
                                     num_samples=cfg.num_samples, temperature=cfg.sample_temperature, seed=cfg.seed,
                                     guards=cfg.guards)
        self.audio_cfg = AudioConfig(sample_rate=SAMPLE_RATE_HZ, max_duration_s=cfg.max_duration_s)
        self.tokenizer = teacher.tokenizer
        self._keys: dict[int, str] = {}

    # -- planning

    def plan(self, utterances: Sequence[Utterance], skips: SkipList) -> tuple[list[list[Window]], list[int]]:
        """Fixed batches of short-utterance windows, and the indices of long utterances."""
        self._keys = {i: u.id for i, u in enumerate(utterances)}
        lengths, short, long_ = {}, [], []
        for i, u in enumerate(utterances):
            if u.duration is None:
                try:  # no cheap header (e.g. HF rows of encoded bytes): decode once to learn the length
                    u.duration = len(decode(u, self.audio_cfg)) / SAMPLE_RATE_HZ
                except AudioError as e:
                    skips.add(u, str(e))
                    continue
            n = int(round(u.duration * SAMPLE_RATE_HZ))
            if u.duration > WINDOW_SECONDS:
                long_.append(i)
            else:
                lengths[i] = n
                short.append(i)
        windows = pack_windows([lengths[i] for i in short], [utterances[i].id for i in short],
                               sample_rate=SAMPLE_RATE_HZ, pack=self.cfg.pack, gap_seconds=self.cfg.pack_gap_s,
                               max_pieces=self.cfg.max_pack)
        # Map plan-local indices back to positions in `utterances`.
        windows = [Window(tuple(Piece(short[p.utt], p.start, p.end, p.offset) for p in w.pieces)) for w in windows]
        bs = self.cfg.batch_size
        return [windows[k : k + bs] for k in range(0, len(windows), bs)], long_

    # -- decoding

    def _layout(self, window: Window, audio: dict[int, np.ndarray]) -> Window | None:
        """Re-lay a planned window with the real decoded lengths (headers can be off by a few samples)."""
        gap = int(self.cfg.pack_gap_s * SAMPLE_RATE_HZ)
        pieces, offset = [], 0
        for p in window.pieces:
            if p.utt not in audio:
                continue  # undecodable: already in the skip list
            n = len(audio[p.utt])
            pieces.append(Piece(p.utt, 0, n, offset))
            offset += n + gap
        if not pieces:
            return None
        w = Window(tuple(pieces))
        return w if w.length <= WINDOW_SECONDS * SAMPLE_RATE_HZ else None

    def decode_batch(self, windows: list[Window], audio: dict[int, np.ndarray], batch_index: int) -> dict[int, _Piece]:
        """Decode a batch of windows and split packed ones back into utterances.

        Whisper sometimes ends a packed transcript early (after the first sentences): utterances left
        without words are packed again for one more round, and anything still unresolved, or whose
        split is unclear (a word deep inside a gap, pieces out of order), is decoded on its own.
        """
        out: dict[int, _Piece] = {}
        solo: list[int] = []
        laid = [self._layout(w, audio) for w in windows]
        pending = [lw for lw in laid if lw is not None]
        # A window that no longer fits 30 s with the real decoded lengths: its clips go solo.
        solo += [p.utt for w, lw in zip(windows, laid) if lw is None for p in w.pieces if p.utt in audio]
        for round_ in range(PACK_ROUNDS):
            if not pending:
                break
            leftovers: list[int] = []
            results = self.decoder.decode([w.assemble(audio) for w in pending], [w.packed for w in pending], batch_index)
            for w, res in zip(pending, results):
                if not w.packed:
                    out[w.pieces[0].utt] = _slice(res, None, 0, None)
                    continue
                if res.guard.cut:  # a loop or a runaway in a shared window: find whose, one clip at a time
                    solo += [p.utt for p in w.pieces]
                    continue
                spans = w.spans_seconds(SAMPLE_RATE_HZ)
                starts = [self.decoder.is_word_start(t) for t in res.best.ids]
                assignment, suspicious = assign_tokens(res.best.token_starts, starts, spans)
                sample_assignments = [assign_tokens(h.token_starts, [self.decoder.is_word_start(t) for t in h.ids], spans)[0]
                                      for h in res.samples]
                for k, p in enumerate(w.pieces):
                    piece = _slice(res, assignment, k, sample_assignments)
                    if k in suspicious:
                        solo.append(p.utt)  # trust a clean solo decode over an unclear split
                    elif not piece.ids:
                        leftovers.append(p.utt)
                    else:
                        out[p.utt] = piece
            if round_ + 1 < PACK_ROUNDS and len(leftovers) > 1:
                keys = [self._keys[u] for u in leftovers]
                repacked = pack_windows([len(audio[u]) for u in leftovers], keys, sample_rate=SAMPLE_RATE_HZ,
                                        pack=True, gap_seconds=self.cfg.pack_gap_s, max_pieces=self.cfg.max_pack)
                pending = [Window(tuple(Piece(leftovers[p.utt], p.start, p.end, p.offset) for p in w.pieces)) for w in repacked]
            else:
                solo += leftovers
                pending = []
        if solo:
            solo = sorted(set(solo))
            results = self.decoder.decode([audio[u] for u in solo], [False] * len(solo), batch_index)
            for u, res in zip(solo, results):
                out[u] = _slice(res, None, 0, None)
        return out

    def decode_long(self, audio: np.ndarray, utt_index: int, batch_index: int) -> _Piece:
        """Long audio: cut at pauses into <= 30-s chunks, decode each, join text and statistics."""
        chunks = split_long(audio, utt_index, sample_rate=SAMPLE_RATE_HZ)
        parts: list[_Piece] = []
        bs = self.cfg.batch_size
        for k in range(0, len(chunks), bs):
            batch = chunks[k : k + bs]
            clips = [audio[c.pieces[0].start : c.pieces[0].end] for c in batch]
            for res in self.decoder.decode(clips, [False] * len(clips), batch_index):
                parts.append(_slice(res, None, 0, None))
        return _Piece(
            ids=[t for p in parts for t in p.ids],
            logprobs=[x for p in parts for x in p.logprobs],
            entropies=[x for p in parts for x in p.entropies],
            eot_logprob=float(np.mean([p.eot_logprob for p in parts])),
            # Probability that no chunk holds speech, treating chunks as independent.
            no_speech_prob=float(np.prod([p.no_speech_prob for p in parts])),
            samples=[[t for p in parts for t in p.samples[s]] for s in range(self.cfg.num_samples)],
            language=parts[0].language,
            guard=join_guard_records([p.guard for p in parts]),
        )

    # -- records

    def record(self, utt: Utterance, piece: _Piece, duration: float, packed: bool) -> dict:
        text = self.tokenizer.decode(piece.ids, skip_special_tokens=True).strip()
        # The reference moves to `reference`; the header duration is replaced by the decoded one.
        rec = {k: v for k, v in utt.to_record().items() if k not in ("text", "duration")}
        for k in LABEL_FIELDS:
            if k in rec:  # an input column with a label field's name is kept under another name
                rec[f"input_{k}"] = rec.pop(k)
        rec.update(
            text=text,
            tokens=piece.ids,
            avg_logprob=round(float(np.mean(piece.logprobs)) if piece.ids else piece.eot_logprob, 6),
            mean_entropy=round(float(np.mean(piece.entropies)) if piece.entropies else 0.0, 6),
            no_speech_prob=round(piece.no_speech_prob, 6),
            compression_ratio=round(compression_ratio(text), 4),
            n_tokens=len(piece.ids),
            duration=round(duration, 3),
            teacher={"name": self.teacher.name, "revision": self.teacher.revision, "backend": self.cfg.backend},
            language=piece.language or self.cfg.language,
            packed=packed,
            guard=piece.guard,
        )
        if self.cfg.num_samples:
            rec["hypotheses"] = [self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in piece.samples]
        if utt.text is not None:
            rec["reference"] = utt.text
        return rec


def join_guard_records(records: Sequence[dict]) -> dict:
    """One guard record for an utterance decoded in several chunks: the worst of each field."""
    cuts = [r["cut"] for r in records if r["cut"]]
    return {"temperature": max(r["temperature"] for r in records),
            "fallbacks": sum(r["fallbacks"] for r in records),
            "compression_ratio": max(r["compression_ratio"] for r in records),
            "no_speech": all(r["no_speech"] for r in records),
            "no_speech_prob": min((r["no_speech_prob"] for r in records if r["no_speech_prob"] is not None),
                                  default=None),
            "cut": cuts[0] if cuts else None}


def pseudo_label(
    utterances: Sequence[Utterance],
    teacher,
    cfg: LabelConfig = LabelConfig(),
    *,
    skip_list: SkipList | None = None,
    done_ids: Iterable[str] = (),
    progress: bool = True,
) -> Iterator[dict]:
    """Yield one label record per utterance (utterances in `done_ids` are planned but not emitted).

    Works without references; an utterance's `text`, when present, is carried as `reference`.
    Bad audio is logged as a warning and recorded in `skip_list` with its reason, and the rest goes on; pass
    `skip_list=SkipList(None)` to read the skips back (`.records`) without writing a file.
    """
    from tqdm.auto import tqdm

    skips = skip_list if skip_list is not None else SkipList(None, stage="label")
    done = set(done_ids)
    labeller = Labeller(teacher, cfg)
    batches, long_ = labeller.plan(utterances, skips)
    total = sum(u.duration or 0.0 for i, u in enumerate(utterances) if u.id not in done and u.id not in skips)
    with tqdm(total=total, unit="s", unit_scale=True, desc="label (audio s)", disable=not progress,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio s [{elapsed}<{remaining}, {rate_fmt}]") as bar:
        for b, windows in enumerate(batches):
            members = [p.utt for w in windows for p in w.pieces]
            if all(utterances[i].id in done for i in members):
                continue
            audio: dict[int, np.ndarray] = {}
            for i in members:
                try:
                    audio[i] = decode(utterances[i], labeller.audio_cfg)
                except AudioError as e:
                    skips.add(utterances[i], str(e))
            pieces = labeller.decode_batch(windows, audio, b)
            packed = {p.utt for w in windows if w.packed for p in w.pieces}
            for i in members:
                u = utterances[i]
                if i in pieces and u.id not in done:
                    dur = len(audio[i]) / SAMPLE_RATE_HZ
                    _advance(bar, dur)
                    yield labeller.record(u, pieces[i], dur, i in packed)
        for k, i in enumerate(long_):
            u = utterances[i]
            if u.id in done:
                continue
            try:
                audio_i = decode(u, labeller.audio_cfg)
            except AudioError as e:
                skips.add(u, str(e))
                continue
            dur = len(audio_i) / SAMPLE_RATE_HZ
            piece = labeller.decode_long(audio_i, i, len(batches) + k)
            _advance(bar, dur)
            yield labeller.record(u, piece, dur, False)


def _advance(bar, seconds: float) -> None:
    """Move the audio-seconds bar; header durations can be a little short of decoded ones, so grow the total."""
    if bar.n + seconds > bar.total:
        bar.total = bar.n + seconds
    bar.update(seconds)


# ------------------------------------------------------------------------------------------- job


@dataclass(frozen=True)
class LabelPaths(OutputPaths):
    """Where a labelling job writes: `labels.jsonl` and its siblings."""

    @property
    def config(self) -> Path:
        return self.sibling("config.yaml")

    @property
    def fingerprint(self) -> Path:
        return self.sibling("fingerprint.json")

    @property
    def summary(self) -> Path:
        return self.sibling("summary.json")

    @property
    def skipped(self) -> Path:
        return self.sibling("skipped.jsonl")

    def shard(self, k: int, n: int) -> Path:
        return self.stem.parent / f"{self.stem.name}.shards" / f"shard-{k:05d}-of-{n:05d}.jsonl"

    def shard_skipped(self, k: int, n: int) -> Path:
        return self.shard(k, n).with_suffix(".skipped.jsonl")

    def shard_done(self, k: int, n: int) -> Path:
        return self.shard(k, n).with_suffix(".done")


def resolve_shard(cfg: Any) -> tuple[int, int]:
    """(shard_id, num_shards) of a config with those fields (labels, targets): torchrun's RANK/WORLD_SIZE when
    launched by it, else the config's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and cfg.num_shards == 1:
        return int(os.environ["RANK"]), world
    return cfg.shard_id, cfg.num_shards


def _check_fingerprint(paths: LabelPaths, fingerprint: dict) -> None:
    import json

    if paths.fingerprint.exists():
        old = json.loads(paths.fingerprint.read_text())
        if old != fingerprint:
            diff = {k: (old.get(k), fingerprint.get(k)) for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)}
            raise LabelError(
                f"{paths.out} was written by a different teacher or config ({diff}, as (existing, requested)); "
                "refusing to resume into it. Use a new --out, or delete the old labels to start over."
            )
    elif paths.out.exists() or paths.shard(0, fingerprint["num_shards"]).parent.exists():
        raise LabelError(f"{paths.out} exists but has no {paths.fingerprint.name}: it was not written by "
                         "`speechkd label`; choose another --out")
    else:
        atomic_write_json(paths.fingerprint, fingerprint)


def run_label(cfg: LabelConfig, data, out: str | os.PathLike, *, progress: bool = True) -> dict:
    """The `speechkd label` job. Returns the summary (also written to `<out stem>.summary.json`)."""
    from speechkd.teachers import load_whisper

    import torch

    paths = LabelPaths(Path(out))
    shard_id, num_shards = resolve_shard(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    utterances = open_data(data)
    if not utterances:
        raise LabelError(f"no utterances found in {data}")
    from speechkd.devices import resolve_device

    teacher = load_whisper(cfg.teacher, device=str(resolve_device(cfg.device)), dtype=getattr(torch, cfg.dtype),
                           compute_type=cfg.compute_type, cpu_threads=cfg.num_threads)
    _ = teacher.tokenizer  # load now: a broken teacher fails before any audio is touched
    fingerprint = {**cfg.fingerprint(), "num_shards": num_shards,
                   "teacher_revision": teacher.revision, "teacher_name": teacher.name}
    if shard_id == 0:
        _check_fingerprint(paths, fingerprint)
        save_config(cfg, paths.config)
    else:
        _wait_for(paths.fingerprint)
        _check_fingerprint(paths, fingerprint)

    mine = sorted(utterances, key=lambda u: u.id)[shard_id::num_shards]
    part = paths.out if num_shards == 1 else paths.shard(shard_id, num_shards)
    skipped = paths.skipped if num_shards == 1 else paths.shard_skipped(shard_id, num_shards)
    done = {r["id"] for r in read_jsonl(part)} if part.exists() else set()
    if done:
        log.info("resuming: %d of %d utterances already labelled in %s", len(done), len(mine), part)
    t0 = time.perf_counter()
    n_new, seconds = 0, 0.0
    with SkipList(skipped, stage="label") as skips, JsonlWriter(part) as writer:
        for rec in pseudo_label(mine, teacher, cfg, skip_list=skips, done_ids=done, progress=progress):
            writer.write(rec)
            n_new += 1
            seconds += rec["duration"]
        n_skipped = len(skips.ids - done)
    wall = time.perf_counter() - t0
    if num_shards > 1:
        paths.shard_done(shard_id, num_shards).touch()
        if shard_id == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            for k in range(num_shards):
                _wait_for(paths.shard_done(k, num_shards))
        if all(paths.shard_done(k, num_shards).exists() for k in range(num_shards)):
            merge_shards(paths, num_shards)
    summary = {
        "shard": f"{shard_id}/{num_shards}",
        "utterances_total": len(mine),
        "labelled_this_run": n_new,
        "labelled_before": len(done),
        "skipped": n_skipped,
        "audio_hours_this_run": round(seconds / 3600, 4),
        "wall_seconds": round(wall, 2),
        "audio_seconds_per_second": round(seconds / wall, 2) if wall > 0 and seconds else None,
        "teacher": teacher.name,
        "backend": cfg.backend,
        "out": str(paths.out),
    }
    if shard_id == 0:
        atomic_write_json(paths.summary, summary)
    log.info("labelled %d utterances (%.2f h) in %.1f s (%s audio s/s), %d skipped", n_new, seconds / 3600, wall,
             summary["audio_seconds_per_second"], n_skipped)
    return summary


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + SHARD_WAIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise LabelError(f"gave up waiting for {path}; did another shard fail? Re-run it, then re-run this one")
        time.sleep(SHARD_POLL_SECONDS)


def merge_shards(paths: LabelPaths, num_shards: int) -> Path:
    """Concatenate shard outputs (sorted by id) into the final JSONL and skip list, atomically."""
    records, skipped = [], []
    for k in range(num_shards):
        records.extend(read_jsonl(paths.shard(k, num_shards)))
        sk = paths.shard_skipped(k, num_shards)
        if sk.exists():
            skipped.extend(read_jsonl(sk))
    records.sort(key=lambda r: r["id"])
    write_jsonl(paths.out, records)
    if skipped:
        write_jsonl(paths.skipped, sorted(skipped, key=lambda r: r["id"]))
    log.info("merged %d shards into %s (%d records)", num_shards, paths.out, len(records))
    return paths.out


def labels_to_dataset(labels: str | os.PathLike, out_dir: str | os.PathLike, data=None) -> Path:
    """Save labels as an HF `Dataset` (`save_to_disk`).

    With `data` an HF dataset (object or saved dir), the result is that dataset's rows that got a label,
    all original columns (audio included) plus the label columns; otherwise the label records themselves.
    """
    import datasets

    records = list(read_jsonl(labels))
    if data is not None and (isinstance(data, datasets.Dataset) or (Path(str(data)) / "dataset_info.json").exists()):
        ds = data if isinstance(data, datasets.Dataset) else datasets.load_from_disk(str(data))
        from speechkd.data import read_hf_dataset

        ids = [u.id for u in read_hf_dataset(ds)]
        by_id = {r["id"]: r for r in records}
        keep = [i for i, uid in enumerate(ids) if uid in by_id]
        ds = ds.select(keep)
        cols = [c for c in LABEL_FIELDS if c not in ("reference",)]
        for c in cols:
            name = c if c not in ds.column_names else f"label_{c}"
            ds = ds.add_column(name, [by_id[ids[i]].get(c) for i in keep])
    else:
        ds = datasets.Dataset.from_list(records)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        ds.save_to_disk(str(tmp))
    return out_dir

