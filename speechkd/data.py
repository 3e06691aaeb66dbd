"""The data layer: every stage reads audio through here.

Three input forms (a folder of audio files, a JSONL manifest, a Hugging Face dataset) become one list of
`Utterance` records with stable, unique ids. Reading a list is cheap (paths and header durations only);
samples are decoded lazily by `decode`/`iter_audio`, which resample to 16 kHz mono float32 and validate.

Two kinds of failure, on purpose:
- `DataError`: the input as a whole cannot be used (no such folder, bad manifest line, missing column,
  duplicate ids). Raised by the readers before any work starts, so a long job never dies an hour in.
- `AudioError`: one item is bad (corrupt, silent, too long ...). `iter_audio` records it in the skip list
  (skipped.jsonl) with the reason and carries on, because one broken file in 100k must not stop a run.

Audio is decoded with soundfile ourselves, never through `datasets`' Audio decoding: datasets >= 4 decodes
through torchcodec/FFmpeg, which is often not installed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import soundfile as sf
import soxr

from speechkd.errors import SpeechkdError
from speechkd.io import JsonlWriter, read_jsonl
from speechkd_runtime.audio import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

RESAMPLE_QUALITY = "HQ"  # soxr preset; transparent for speech, far cheaper than "VHQ"
# Half a 16-bit PCM step: a signal whose peak is below this stores as all zeros, i.e. digital silence.
SILENCE_PEAK = 0.5 / 32768
# Float samples far above full scale are almost always integer PCM that was never divided by 32768.
MAX_FLOAT_PEAK = 8.0
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus") + ((".mp3",) if "MP3" in sf.available_formats() else ())
PATH_KEYS = ("audio", "audio_filepath", "file_name")  # ours, NeMo, HF audiofolder: first present wins
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # HF audiofolder convention
HF_SAVE_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # written by save_to_disk
TEXT_FIX = "or run the label stage to produce pseudo-labels"
MAX_LISTED = 10  # how many offending ids/lines an error message lists before summarising
HF_BATCH_ROWS = 1024  # rows of an HF audio column scanned at once: bounds memory when rows embed audio bytes
HF_DEFAULTS = {"audio_column": "audio", "text_column": "text", "id_column": None}
ACCEPTED_FORMS = (
    "a JSONL manifest (.jsonl), a folder of audio files (optionally with metadata.csv/metadata.jsonl), "
    "a folder written by Dataset.save_to_disk, a single audio file, or a datasets.Dataset / DatasetDict object"
)


class DataError(SpeechkdError, ValueError):
    """The input as a whole is unusable; raised before work starts. The message names the input and the fix."""


class AudioError(SpeechkdError, ValueError):
    """One item is unusable; the message names the file (or utterance) and the fix."""


@dataclass
class Utterance:
    """One item of input. Get its samples with `decode` (or `iter_audio`), whichever field holds them."""

    id: str
    audio: str | None = None  # absolute path
    array: np.ndarray | None = None  # in-memory samples instead of a path
    sampling_rate: int | None = None
    text: str | None = None
    speaker: str | None = None
    duration: float | None = None  # seconds, from the header when cheap, else None
    meta: dict = field(default_factory=dict)  # every other column, carried along to outputs
    # Lazy source for samples that are neither a file nor already in memory (HF rows holding encoded bytes
    # or arrays): reading 100 h of audio into memory up front is not an option, so we keep a handle.
    loader: Callable[[], tuple[np.ndarray, int]] | None = field(default=None, repr=False, compare=False)
    # Set by a reader when the row is unusable for a reason found before decoding (e.g. empty text with
    # require_text). Kept in the list rather than dropped so iter_audio records it in the skip list.
    skip_reason: str | None = field(default=None, compare=False)

    @property
    def source(self) -> str:
        """Where the samples come from, for messages and the skip list."""
        if self.audio:
            return self.audio
        return str(getattr(self.loader, "name", None) or f"utterance {self.id!r}")

    def to_record(self) -> dict:
        """A JSON-able dict for output files: meta columns plus the known fields (samples and handles left out).

        Use this rather than dataclasses.asdict, which would deep-copy arrays and dataset handles.
        """
        record = dict(self.meta)
        record.update(id=self.id, audio=self.audio, text=self.text, speaker=self.speaker, duration=self.duration)
        return {k: v for k, v in record.items() if v is not None or k in self.meta}


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = SAMPLE_RATE_HZ
    max_duration_s: float | None = None  # None: accept any length (labelling transcribes long audio completely)
    min_duration_s: float = 0.1
    mono: Literal["mean", "first", "error"] = "mean"  # what to do with multichannel audio

    def validate(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.min_duration_s < 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if self.max_duration_s is not None and self.max_duration_s <= self.min_duration_s:
            raise ValueError(f"max_duration_s ({self.max_duration_s}) must be greater than "
                             f"min_duration_s ({self.min_duration_s})")
        if self.mono not in ("mean", "first", "error"):
            raise ValueError(f"mono = {self.mono!r}; choose one of ['mean', 'first', 'error']")


# --------------------------------------------------------------------------------------------- decoding


def load_audio(path: str | os.PathLike, cfg: AudioConfig = AudioConfig(), *,
               offset_s: float = 0.0, duration_s: float | None = None) -> np.ndarray:
    """Read a file as float32 mono at cfg.sample_rate; raise AudioError naming the file and the fix.

    offset_s/duration_s read a segment (NeMo manifests with `offset`); by default the whole file is read,
    however long, because silently truncating audio would silently truncate transcripts.
    """
    cfg.validate()
    data, sr = _read_file(os.fspath(path), cfg, offset_s, duration_s)
    return _finish(data, sr, cfg, os.fspath(path))


def decode(utt: Utterance, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    """Samples of one utterance as float32 mono at cfg.sample_rate, validated; AudioError if unusable."""
    if utt.skip_reason:
        raise AudioError(utt.skip_reason)
    cfg.validate()
    if utt.array is not None:
        if not utt.sampling_rate:
            raise AudioError(f"{utt.source}: in-memory samples without a sampling_rate; set Utterance.sampling_rate")
        return _finish(utt.array, utt.sampling_rate, cfg, utt.source)
    if utt.loader is not None:
        try:
            samples, sr = utt.loader()
        except AudioError:
            raise
        except (RuntimeError, OSError, ValueError) as e:  # e.g. torchcodec failing on a damaged stream
            raise AudioError(f"{utt.source}: cannot decode ({e}); re-encode the item or remove it") from e
        return _finish(samples, sr, cfg, utt.source)
    if utt.audio:
        offset = utt.meta.get("offset")
        if offset is not None:  # a segment of a longer file (NeMo): `duration` is the segment's length
            return load_audio(utt.audio, cfg, offset_s=float(offset), duration_s=utt.duration)
        return load_audio(utt.audio, cfg)
    raise AudioError(f"utterance {utt.id!r}: has no audio (no path and no samples); fix the input row")


def _read_file(name: str, cfg: AudioConfig | None, offset_s: float = 0.0,
               duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Native-rate [frames, channels] samples. With cfg, the header's length is checked before decoding,
    so rejecting a 3-hour file costs a header read rather than a gigabyte of samples."""
    if not os.path.exists(name):
        raise AudioError(f"{name}: file not found; fix the path (or the manifest entry) or remove the item")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a folder, not an audio file; point the entry at an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(f"{name}: empty file (0 bytes); re-export the recording or remove the item")
    try:
        with sf.SoundFile(name) as f:
            sr = f.samplerate
            start = min(int(round(offset_s * sr)), f.frames)
            frames = f.frames - start
            if duration_s is not None:
                frames = min(frames, int(round(duration_s * sr)))
            if cfg is not None and frames > 0:  # zero frames gets its own message in _finish
                _check_duration(frames / sr, cfg, name)
            if start:
                f.seek(start)
            return f.read(frames, dtype="float32", always_2d=True), sr
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioError(f"{name}: cannot decode ({e}); the file is corrupt or not a format soundfile reads "
                         f"({', '.join(AUDIO_EXTENSIONS)}): re-encode it, e.g. `ffmpeg -i IN -ac 1 -ar 16000 "
                         "OUT.wav`, or remove it") from e


def _finish(samples: Any, sr: int | None, cfg: AudioConfig, name: str) -> np.ndarray:
    """Validate decoded samples, then mix to mono and resample. Shared by files and in-memory arrays."""
    if not sr or sr <= 0:
        raise AudioError(f"{name}: invalid sampling rate {sr!r}; give the true rate of the samples")
    x = _as_frames_by_channels(_to_float32(samples, name), name)
    if x.size == 0:
        raise AudioError(f"{name}: contains no samples; re-export the recording or remove the item")
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: contains NaN or Inf samples; the file is damaged, re-export it or remove it")
    if x.shape[1] == 1:
        x = x[:, 0]
    elif cfg.mono == "mean":
        x = x.mean(axis=1)
    elif cfg.mono == "first":
        x = x[:, 0]
    else:
        raise AudioError(f"{name}: has {x.shape[1]} channels and audio.mono = 'error'; convert it to mono "
                         "or set audio.mono to 'mean' or 'first'")
    # Checked after mixing: a silent first channel, or out-of-phase channels, give a silent mono signal.
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent (all samples are zero); check the recording or remove the item")
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(f"{name}: peak amplitude {peak:.0f} is far above full scale (1.0); the samples look "
                         "like integer PCM stored as float: divide them by 32768 (int16), or pass the integers as is")
    _check_duration(len(x) / sr, cfg, name)
    if sr != cfg.sample_rate:
        x = soxr.resample(x, sr, cfg.sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_duration(seconds: float, cfg: AudioConfig, name: str) -> None:
    if seconds < cfg.min_duration_s:
        raise AudioError(f"{name}: is {seconds:.3f} s long, shorter than audio.min_duration_s = "
                         f"{cfg.min_duration_s} s; remove it or lower audio.min_duration_s")
    if cfg.max_duration_s is not None and seconds > cfg.max_duration_s:
        raise AudioError(f"{name}: is {seconds:.1f} s long, longer than audio.max_duration_s = "
                         f"{cfg.max_duration_s} s; split it into shorter segments (e.g. with a VAD), "
                         "or raise or unset audio.max_duration_s")


def _to_float32(samples: Any, name: str) -> np.ndarray:
    if hasattr(samples, "detach"):  # a torch tensor from a decoder object
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind == "i":  # signed PCM: full scale is 2**(bits-1)
        return x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    if x.dtype.kind == "u":  # unsigned PCM (8-bit WAV) is offset by half its range
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        return (x.astype(np.float32) - half) / half
    raise AudioError(f"{name}: samples have dtype {x.dtype}; pass float or integer PCM samples")


def _as_frames_by_channels(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 1:
        return x[:, None]
    if x.ndim == 2:
        # soundfile gives [frames, channels], torchcodec/HF give [channels, frames]; channels are the short axis.
        return x if x.shape[0] >= x.shape[1] else x.T
    raise AudioError(f"{name}: samples have shape {x.shape}; expected [samples] or [channels, samples]")


def _decode_value(value: Any, name: str) -> tuple[Any, int]:
    """Native samples from any audio value an HF row may hold: a path, {path, bytes}, {array, sampling_rate},
    or a decoder object (torchcodec's AudioDecoder, or anything with get_all_samples())."""
    if value is None:
        raise AudioError(f"{name}: the audio value is empty; fix the row or remove it")
    if isinstance(value, (str, os.PathLike)):
        return _read_file(os.fspath(value), None)
    if hasattr(value, "get_all_samples"):
        s = value.get_all_samples()
        return s.data, int(s.sample_rate)
    if isinstance(value, dict):
        if value.get("array") is not None:
            return value["array"], int(value.get("sampling_rate") or 0)
        if value.get("bytes"):
            try:
                return sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as e:
                raise AudioError(f"{name}: cannot decode the embedded audio bytes ({e}); re-encode the item") from e
        if value.get("path"):
            return _read_file(value["path"], None)
    raise AudioError(f"{name}: unrecognised audio value of type {type(value).__name__}; "
                     "expected a path, {'path', 'bytes'} or {'array', 'sampling_rate'}")


class _ValueAudio:
    """Loader for an audio value already in hand (an HF row from an iterable, a decoder object)."""

    def __init__(self, value: Any, name: str):
        self.value, self.name = value, name

    def __call__(self) -> tuple[Any, int]:
        return _decode_value(self.value, self.name)


class _HFRowAudio:
    """Loader that fetches one row's audio from an arrow-formatted dataset on demand.

    Rows are fetched in arrow form so an array column comes back as numpy without a Python-list detour.
    Picklable, so worker processes can use it: a disk-backed dataset pickles as a reference to its memory-mapped
    files; an in-memory one pickles its table (once per pickle.dumps call, shared by all loaders in it).
    """

    def __init__(self, arrow_ds: Any, index: int, name: str):
        self.ds, self.index, self.name = arrow_ds, index, name

    def __call__(self) -> tuple[Any, int]:
        scalar = self.ds[self.index].column(0)[0]
        if hasattr(scalar, "keys") and "array" in scalar.keys() and scalar["array"].is_valid:
            array = scalar["array"]
            nested = hasattr(array.type, "value_type") and hasattr(array.type.value_type, "value_type")
            samples = np.asarray(array.as_py()) if nested else array.values.to_numpy(zero_copy_only=False)
            sr = scalar["sampling_rate"].as_py() if "sampling_rate" in scalar.keys() else None
            return samples, int(sr or 0)
        return _decode_value(scalar.as_py(), self.name)


def _header(path: str) -> tuple[int | None, float | None]:
    """(sampling rate, duration) from the file header; (None, None) when it can't be read (decode will say why)."""
    try:
        with sf.SoundFile(path) as f:
            return f.samplerate, f.frames / f.samplerate
    except Exception:  # noqa: BLE001 - any unreadable file is reported properly at decode time
        return None, None


# --------------------------------------------------------------------------------------------- skip list


class SkipList:
    """skipped.jsonl: one line per skipped item {id, source, reason, stage}, appended and flushed as it happens.

    Reopening an existing file loads its records, so a resumed run knows what was skipped before and a
    re-skipped item is not written twice (same id, stage and reason).
    """

    def __init__(self, path: str | os.PathLike | None, stage: str = "data"):
        self.path = Path(path) if path is not None else None
        self.stage = stage
        self._records: list[dict] = []
        if self.path is not None and self.path.exists():
            self._records = list(read_jsonl(self.path))
        self._seen = {(r.get("id"), r.get("stage"), r.get("reason")) for r in self._records}
        self._ids = {r.get("id") for r in self._records}
        self._writer: JsonlWriter | None = None

    def add(self, utt_or_id: Utterance | str, reason: str, source: str | None = None) -> None:
        if isinstance(utt_or_id, Utterance):
            uid, source = utt_or_id.id, source if source is not None else utt_or_id.source
        else:
            uid = str(utt_or_id)
        key = (uid, self.stage, reason)
        if key in self._seen:
            return
        self._seen.add(key)
        record = {"id": uid, "source": source, "reason": reason, "stage": self.stage}
        logger.warning("%s: skipping %s: %s", self.stage, uid, reason)  # never silent, with or without a file
        self._records.append(record)
        self._ids.add(uid)
        if self.path is not None:
            if self._writer is None:
                self._writer = JsonlWriter(self.path, mode="a")
            self._writer.write(record)

    @property
    def ids(self) -> set[str]:
        return set(self._ids)

    @property
    def records(self) -> list[dict]:
        return [dict(r) for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, uid: object) -> bool:
        return uid in self._ids

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "SkipList":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_audio(utterances: Iterable[Utterance], cfg: AudioConfig = AudioConfig(),
               skip_list: SkipList | None = None, *,
               log: logging.Logger | Callable[[str], Any] | None = None) -> Iterator[tuple[Utterance, np.ndarray]]:
    """Yield (utterance, samples), decoding one at a time. A bad item is recorded in skip_list with its
    reason, logged as a warning, and the rest goes on; anything other than AudioError is a bug and raises."""
    cfg.validate()
    warn = (log.warning if isinstance(log, logging.Logger) else log) if log is not None else logger.warning
    for utt in utterances:
        try:
            samples = decode(utt, cfg)
        except AudioError as e:
            if skip_list is not None:
                skip_list.add(utt, str(e))  # which logs it
            else:
                warn(f"skipping {utt.id}: {e}")
            continue
        yield utt, samples


# --------------------------------------------------------------------------------------------- readers


@dataclass
class _Row:
    """One input row before it becomes an Utterance."""

    where: str  # "file:line" (or the file) for messages
    audio: str | None  # absolute path
    rel: str | None  # path used to derive an id: relative to the input root, as posix
    fields: dict  # the remaining columns


def read_manifest(path: str | os.PathLike, *, require_text: bool = False) -> list[Utterance]:
    """A JSONL manifest: `audio` (or `audio_filepath`, `file_name`) relative to the manifest's folder or
    absolute; optional `id`, `text`, `speaker`, `duration`, `offset` (NeMo segment); other keys go to meta."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest {p} does not exist (or is not a file); give the path to a .jsonl manifest")
    root = p.parent.absolute()
    rows = []
    for where, rec in _read_json_lines(p):
        key = next((k for k in PATH_KEYS if rec.get(k) not in (None, "")), None)
        if key is None:
            raise DataError(f"{where}: no audio path; every line needs one of {list(PATH_KEYS)}")
        written = rec.pop(key)
        if not isinstance(written, str):
            raise DataError(f"{where}: `{key}` should be a path string, got {type(written).__name__}")
        for k in PATH_KEYS:  # a row giving two path keys: the rest are aliases, not meta
            rec.pop(k, None)
        audio = os.path.normpath(root / os.path.expanduser(written))
        rows.append(_Row(where, audio, _rel_for_id(audio, root, written), rec))
    if not rows:
        raise DataError(f"manifest {p} has no entries; add one JSON object per line")
    text_fix = f"add a `text` field to every line of {p}, {TEXT_FIX}"
    return _build(rows, str(p), require_text, text_fix)


def read_audiofolder(path: str | os.PathLike, *, require_text: bool = False) -> list[Utterance]:
    """Every audio file under a folder (sorted, recursive), or, when metadata.jsonl/metadata.csv files exist
    (HF audiofolder: `file_name` relative to the metadata file, plus `text` and any other columns), their rows.

    With metadata, rows drive the list: a row whose file is missing stays in, to be skipped with a reason
    at decode time rather than vanish silently.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"audio folder {root} does not exist (or is not a folder)")
    root = root.absolute()
    files, metadata = _scan_folder(root)
    rows_by_audio: dict[str, tuple[int, _Row]] = {}
    for meta_path in metadata:
        depth = len(meta_path.relative_to(root).parts)
        for where, rec in _read_metadata(meta_path):
            name = rec.pop("file_name", None)
            if not name:
                raise DataError(f"{where}: no `file_name`; every metadata row names its audio file (relative path)")
            audio = os.path.normpath(meta_path.parent / str(name))
            # Nested metadata files may list the same file (a corpus-level file plus one per split folder);
            # like HF audiofolder, the metadata closest to the file wins, and the file is listed once.
            if audio not in rows_by_audio or depth > rows_by_audio[audio][0]:
                rows_by_audio[audio] = (depth, _Row(where, audio, _rel_for_id(audio, root, str(name)), rec))
    rows = [r for _, r in rows_by_audio.values()]  # metadata row order
    if metadata:
        unlisted = sorted(set(files) - {r.rel for r in rows})
        if unlisted:
            logger.warning("%s: %d audio file(s) not listed in the metadata are ignored (e.g. %s)",
                           root, len(unlisted), unlisted[0])
        if not rows:
            raise DataError(f"{root}: the metadata files {[str(m) for m in metadata]} have no rows")
        text_fix = f"add a `text` column to {', '.join(str(m) for m in metadata)}, {TEXT_FIX}"
    else:
        if not files:
            raise DataError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder or below")
        rows = [_Row(str(root / f), str(root / f), f, {}) for f in files]
        text_fix = f"add a metadata.csv with `file_name,text` columns to {root}, {TEXT_FIX}"
    return _build(rows, str(root), require_text, text_fix)


def _scan_folder(root: Path) -> tuple[list[str], list[Path]]:
    files, metadata = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden entries are tool droppings (.git, macOS ._foo.wav resource forks), never data.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = [m for m in METADATA_FILES if m in filenames]
        if len(here) > 1:
            raise DataError(f"{dirpath}: has both {here[0]} and {here[1]}; keep one metadata file per folder")
        metadata += [Path(dirpath) / m for m in here]
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(AUDIO_EXTENSIONS):
                files.append(Path(os.path.relpath(os.path.join(dirpath, f), root)).as_posix())
    return sorted(files), sorted(metadata)


def _read_metadata(path: Path) -> list[tuple[str, dict]]:
    if path.suffix == ".jsonl":
        return _read_json_lines(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            raise DataError(f"{path}: no `file_name` column (header: {reader.fieldnames}); the first row must name it")
        # csv gives "" for an absent value; None keeps "no text" distinct from the literal empty-string label.
        return [(f"{path}:{n}", {k: (v if v != "" else None) for k, v in row.items() if k is not None})
                for n, row in enumerate(reader, 2)]


def _read_json_lines(path: Path) -> list[tuple[str, dict]]:
    """Parse strictly: a user's manifest with a broken line is a broken input, not a torn crash tail."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e}); it should be UTF-8 JSONL, one object per line") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from e
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(rec).__name__}")
        rows.append((f"{path}:{n}", rec))
    return rows


def _rel_for_id(audio: str, root: Path, written: str) -> str:
    """The path an id is derived from: relative to the input root when inside it, else as written."""
    rel = os.path.relpath(audio, root)
    if rel.startswith(".."):
        rel = os.path.normpath(written)
    return Path(rel).as_posix().lstrip("/")


def _build(rows: list[_Row], source: str, require_text: bool, text_fix: str) -> list[Utterance]:
    """Rows -> Utterances: ids, text checks, header durations. Shared by manifests and audio folders."""
    if require_text and not any(r.fields.get("text") is not None for r in rows):
        raise DataError(f"{source}: no transcripts (`text`) found; {text_fix}")
    explicit = [r.fields.pop("id", None) for r in rows]
    explicit = [None if e == "" else e for e in explicit]
    offsets = [r.fields.get("offset") for r in rows]
    ids = _assign_ids(explicit, [r.rel for r in rows], offsets, source)
    utts = []
    for row, uid in zip(rows, ids):
        f = row.fields
        text = f.pop("text", None)
        speaker = f.pop("speaker", None)
        if speaker is None:
            speaker = f.get("speaker_id")  # left in meta too, so it is written back under its own name
        duration = f.pop("duration", None)
        try:
            duration = float(duration) if duration is not None else None
            if f.get("offset") is not None:
                f["offset"] = float(f["offset"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{row.where}: `duration`/`offset` should be seconds, a number ({e})") from e
        sr = None
        if duration is None and row.audio:
            sr, duration = _header(row.audio)
        utt = Utterance(
            id=uid, audio=row.audio, sampling_rate=sr, text=None if text is None else str(text),
            speaker=None if speaker is None else str(speaker), duration=duration, meta=f,
        )
        if require_text and not (utt.text or "").strip():
            utt.skip_reason = f"{row.where}: no text for {row.audio}; add a transcript to that row, {TEXT_FIX}"
        utts.append(utt)
    return utts


def _assign_ids(explicit: list[Any], rels: list[str | None], offsets: list[Any], source: str) -> list[str]:
    """Explicit ids where given; else the file stem, or the relative path without extension where stems collide.

    Derived from paths, never from row order, so the same input gives the same ids on every run; a row with
    an offset (a segment of a longer file) gets the offset in milliseconds appended.
    """
    def key(rel: str, off: Any, full: bool) -> str:
        base = rel if full else Path(rel).stem
        return base if off is None else f"{base}_{int(round(float(off) * 1000)):08d}"

    no_ext = [None if r is None else str(Path(r).with_suffix("")) if Path(r).suffix else r for r in rels]
    stems = Counter(key(r, o, False) for e, r, o in zip(explicit, rels, offsets) if e is None and r is not None)
    paths = Counter(key(n, o, True) for e, n, o in zip(explicit, no_ext, offsets) if e is None and n is not None)
    ids = []
    for i, (e, r, n, o) in enumerate(zip(explicit, rels, no_ext, offsets)):
        if e is not None:
            ids.append(str(e))
        elif r is None:
            ids.append(f"{i:08d}")  # no path to derive from: the row index, stable for the same input
        elif stems[key(r, o, False)] == 1:
            ids.append(key(r, o, False))
        else:  # a.wav next to a.flac keeps its extension
            ids.append(key(n, o, True) if paths[key(n, o, True)] == 1 else key(r, o, True))
    dup = sorted(k for k, c in Counter(ids).items() if c > 1)
    if dup:
        more = f" and {len(dup) - MAX_LISTED} more" if len(dup) > MAX_LISTED else ""
        raise DataError(f"{source}: duplicate ids {dup[:MAX_LISTED]}{more}; ids must be unique: "
                        "fix the `id` column (or remove repeated rows)")
    return ids


def read_hf_dataset(ds: Any, *, audio_column: str = "audio", text_column: str | None = "text",
                    id_column: str | None = None, require_text: bool = False) -> list[Utterance]:
    """A Hugging Face `datasets.Dataset` (or a save_to_disk folder, or an iterable of row dicts).

    Every original column except the audio one is kept in meta, under its own name, so later stages can
    write the dataset back. Audio is never decoded through `datasets` (torchcodec may be absent): an `Audio`
    column is cast to decode=False and its paths/bytes/arrays are decoded with soundfile, lazily.
    Ids: id_column, else an `id` column, else file stems from the audio paths, else the row index.
    """
    datasets = _import_datasets()
    where = "HF dataset"
    if isinstance(ds, (str, os.PathLike)):
        where, ds = str(ds), _load_from_disk(Path(ds))
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"{where}: a DatasetDict with splits {list(ds)}; pass one split: ds['<split>'], "
                        "or open_data(..., split='<split>')")
    if isinstance(ds, datasets.Dataset):
        if ds.cache_files:
            where = str(Path(ds.cache_files[0]["filename"]).parent)
        _check_columns(list(ds.column_names), where, audio_column, text_column, id_column, require_text)
        ds = _without_decoding(ds, audio_column)
        audio = _scan_hf_audio(ds, audio_column, where)
        others = [c for c in ds.column_names if c != audio_column]
        metas = ds.select_columns(others).to_list() if others else [{} for _ in range(len(ds))]
    else:
        if getattr(ds, "features", None) is not None and audio_column in ds.features:
            ds = _without_decoding(ds, audio_column)
        try:
            rows = list(ds)
        except TypeError as e:
            raise DataError(f"{where}: expected a datasets.Dataset or an iterable of row dicts, "
                            f"got {type(ds).__name__}") from e
        if not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{where}: every row should be a dict of columns")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        _check_columns(columns, where, audio_column, text_column, id_column, require_text)
        audio = [_eager_audio(r.get(audio_column), f"{where} row {i}") for i, r in enumerate(rows)]
        metas = [{k: v for k, v in r.items() if k != audio_column} for r in rows]
    if not metas:
        raise DataError(f"{where}: the dataset has no rows")
    return _build_hf(audio, metas, where, text_column, id_column, require_text)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a core dependency, but keep the hint for slim installs
        raise DataError("reading Hugging Face datasets needs `datasets`: pip install datasets") from e
    return datasets


def _load_from_disk(path: Path) -> Any:
    if not path.is_dir():
        raise DataError(f"{path}: no such folder; give a folder written by Dataset.save_to_disk")
    try:
        return _import_datasets().load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not a saved dataset"
        raise DataError(f"{path}: cannot load it as a saved HF dataset ({e}); give a save_to_disk folder") from e


def _check_columns(columns: list[str], where: str, audio_column: str, text_column: str | None,
                   id_column: str | None, require_text: bool) -> None:
    if audio_column not in columns:
        raise DataError(f"{where}: no audio column {audio_column!r} (columns: {columns}); "
                        "pass audio_column='<the audio column>'")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{where}: no id column {id_column!r} (columns: {columns}); pass id_column= or leave it unset")
    if require_text and (text_column is None or text_column not in columns):
        raise DataError(f"{where}: no text column {text_column!r} (columns: {columns}); "
                        f"pass text_column='<the transcript column>', {TEXT_FIX}")


def _without_decoding(ds: Any, column: str) -> Any:
    feature = (ds.features or {}).get(column)
    if type(feature).__name__ == "Audio" and getattr(feature, "decode", False):
        ds = ds.cast_column(column, _import_datasets().Audio(decode=False))
    return ds


def _scan_hf_audio(ds: Any, column: str, where: str) -> list[dict]:
    """Per row: a local path, or a lazy loader; plus sampling rate and duration when cheap.

    Reads the audio column in arrow batches: paths, sampling rates and array lengths come from arrow
    metadata without materialising any samples or bytes in Python.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow_ds = ds.select_columns([column]).with_format("arrow")
    out: list[dict] = []
    for batch in arrow_ds.iter(batch_size=HF_BATCH_ROWS):
        col = batch.column(column)
        n, kind = batch.num_rows, col.type
        paths, srs, lengths, has_bytes = [None] * n, [None] * n, [None] * n, [False] * n
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            paths = col.to_pylist()
        elif pa.types.is_struct(kind):
            fields = {kind.field(k).name for k in range(kind.num_fields)}
            if "path" in fields:
                paths = pc.struct_field(col, "path").to_pylist()
            if "bytes" in fields:
                has_bytes = pc.is_valid(pc.struct_field(col, "bytes")).to_pylist()
            if "array" in fields:
                lengths = pc.list_value_length(pc.struct_field(col, "array")).to_pylist()
            if "sampling_rate" in fields:
                srs = pc.struct_field(col, "sampling_rate").to_pylist()
        else:
            raise DataError(f"{where}: audio column {column!r} has type {kind}; expected paths, "
                            "{'path','bytes'} or {'array','sampling_rate'}")
        for j in range(n):
            index, path = len(out), paths[j]
            name = f"{where} row {index}" + (f" ({path})" if path else "")
            info: dict = {"name": name, "path": path, "audio": None, "loader": None, "sr": srs[j], "duration": None}
            if lengths[j] is not None or has_bytes[j]:  # bytes win over path, as in datasets itself
                info["loader"] = _HFRowAudio(arrow_ds, index, name)
                if lengths[j] is not None and srs[j]:
                    info["duration"] = lengths[j] / srs[j]
            elif path:
                info["audio"] = os.path.abspath(path)
                info["sr"], info["duration"] = _header(info["audio"])
            else:
                info["skip"] = f"{name}: no audio in this row; fix the row or remove it"
            out.append(info)
    return out


def _eager_audio(value: Any, name: str) -> dict:
    """Audio info for a row we hold in hand (IterableDataset, list of dicts)."""
    info: dict = {"name": name, "path": None, "audio": None, "loader": None, "sr": None, "duration": None}
    if value is None:
        info["skip"] = f"{name}: no audio in this row; fix the row or remove it"
    elif isinstance(value, (str, os.PathLike)):
        info["path"] = os.fspath(value)
    elif isinstance(value, dict) and value.get("array") is not None:
        info["array"] = np.asarray(value["array"])
        info["sr"], info["path"] = value.get("sampling_rate"), value.get("path")
        if info["sr"]:
            info["duration"] = max(info["array"].shape) / info["sr"] if info["array"].size else 0.0
    elif isinstance(value, dict) and not value.get("bytes"):
        info["path"] = value.get("path")
    else:  # embedded bytes, or a decoder object: decode later, on demand
        info["loader"] = _ValueAudio(value, name)
        meta = getattr(value, "metadata", None)
        info["path"] = getattr(meta, "path", None) or (value.get("path") if isinstance(value, dict) else None)
        info["sr"] = getattr(meta, "sample_rate", None)
        info["duration"] = getattr(meta, "duration_seconds_from_header", None)
    if info["path"] and info["loader"] is None and "array" not in info:
        info["audio"] = os.path.abspath(info["path"])
        info["sr"], info["duration"] = _header(info["audio"])
    return info


def _build_hf(audio: list[dict], metas: list[dict], where: str, text_column: str | None,
              id_column: str | None, require_text: bool) -> list[Utterance]:
    id_col = id_column or ("id" if "id" in metas[0] else None)
    explicit = [None if id_col is None or m.get(id_col) is None else str(m[id_col]) for m in metas]
    # File stems make readable ids, but only if every row has a path; otherwise the row index, for all rows.
    rels = [a["path"] for a in audio]
    if not all(rels):
        rels = [None] * len(audio)
    rels = [None if r is None else Path(r).as_posix().lstrip("/") for r in rels]
    ids = _assign_ids(explicit, rels, [None] * len(audio), where)
    utts = []
    for a, meta, uid in zip(audio, metas, ids):
        text = meta.get(text_column) if text_column else None
        speaker = meta.get("speaker", meta.get("speaker_id"))
        duration = meta.get("duration")
        utt = Utterance(
            id=uid, audio=a["audio"], array=a.get("array"), sampling_rate=a["sr"],
            text=None if text is None else str(text), speaker=None if speaker is None else str(speaker),
            duration=float(duration) if isinstance(duration, (int, float)) else a["duration"],
            meta=dict(meta), loader=a["loader"], skip_reason=a.get("skip"),
        )
        if require_text and utt.skip_reason is None and not (utt.text or "").strip():
            utt.skip_reason = f"{a['name']}: no text in column {text_column!r}; add a transcript, {TEXT_FIX}"
        utts.append(utt)
    return utts


# --------------------------------------------------------------------------------------------- dispatch


def open_data(spec: Any, *, require_text: bool = False, split: str | None = None, **hf_kwargs: Any) -> list[Utterance]:
    """Read any accepted input form into Utterances; DataError (listing the accepted forms) otherwise.

    hf_kwargs (audio_column, text_column, id_column) apply to HF datasets only; split picks a DatasetDict
    split, or a sub-folder of an audio folder (HF audiofolder layout: data/train, data/test).
    """
    unknown = set(hf_kwargs) - set(HF_DEFAULTS)
    if unknown:
        raise TypeError(f"open_data() got unexpected keyword(s) {sorted(unknown)}; valid: {sorted(HF_DEFAULTS)}")
    if type(spec).__module__.split(".")[0] == "datasets":  # checked by module so paths never import datasets
        return read_hf_dataset(_pick_split(spec, split, "the dataset"), require_text=require_text, **hf_kwargs)
    if not isinstance(spec, (str, os.PathLike)):
        raise DataError(f"cannot read data from a {type(spec).__name__}; give {ACCEPTED_FORMS}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give {ACCEPTED_FORMS}")
    if path.is_dir() and any((path / m).is_file() for m in HF_SAVE_MARKERS):
        ds = _pick_split(_load_from_disk(path), split, str(path))
        return read_hf_dataset(ds, require_text=require_text, **hf_kwargs)
    given = {k: v for k, v in hf_kwargs.items() if v != HF_DEFAULTS[k]}
    if given:
        raise DataError(f"{path}: {sorted(given)} apply to HF datasets only; this is not one")
    if path.is_dir():
        if split is not None:
            if not (path / split).is_dir():
                raise DataError(f"{path}: no sub-folder {split!r} for split={split!r}")
            path = path / split
        return read_audiofolder(path, require_text=require_text)
    if split is not None:
        raise DataError(f"{path}: split={split!r} applies to HF datasets and audio folders, not to a file")
    if path.suffix.lower() in (".jsonl", ".json"):  # NeMo names its JSONL manifests .json
        return read_manifest(path, require_text=require_text)
    if path.suffix.lower() in AUDIO_EXTENSIONS or _header(str(path))[0] is not None:
        if require_text:
            raise DataError(f"{path}: a single audio file has no transcript; give a manifest with a `text` field, "
                            f"{TEXT_FIX}")
        sr, duration = _header(str(path.absolute()))
        return [Utterance(id=path.stem, audio=str(path.absolute()), sampling_rate=sr, duration=duration)]
    raise DataError(f"{path}: not a form speechkd reads; give {ACCEPTED_FORMS}")


def _pick_split(ds: Any, split: str | None, where: str) -> Any:
    if isinstance(ds, dict):  # DatasetDict and IterableDatasetDict are dicts of splits
        if split is None and len(ds) == 1:
            return next(iter(ds.values()))
        if split is None or split not in ds:
            raise DataError(f"{where}: has splits {list(ds)}; pick one with split='<name>'")
        return ds[split]
    own = getattr(ds, "split", None)
    if split is not None and own is not None and str(own) != split:
        raise DataError(f"{where}: is the {str(own)!r} split, but split={split!r} was asked for")
    return ds
