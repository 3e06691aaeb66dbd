"""Crash-safe file writing, and the JSONL readers, shared by every stage.

Two habits keep long jobs safe: whole files are written to a temporary sibling and renamed into
place (a reader never sees half a file), and JSONL streams are appended one complete line at a time
and flushed, so a killed job leaves only whole records behind (a torn last line is dropped on read).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from speechkd.errors import SpeechkdError


def _default_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling of `path`; on success it replaces `path` whole.

    Readers see the old directory or the complete new one, never a half-written one; on any error (or a
    kill) the temporary sibling (`.NAME.XXXX.tmp`) is removed or left behind, and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temp dir into place; an older dst is moved aside first, then deleted.

    Two processes may race to build the same dir: whichever renames second finds dst present and
    simply discards its own copy, since both copies hold the same content.
    """
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        try:
            os.replace(dst, trash / dst.name)
        except OSError:
            shutil.rmtree(trash, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
            return
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(src, dst)
    except OSError:
        if not dst.exists():
            raise
        shutil.rmtree(src, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in records; make them plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_record(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=_json_default)


class JsonlWriter:
    """Append complete JSON lines and flush each one, so partial output survives a crash."""

    def __init__(self, path: str | os.PathLike, mode: str = "a"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "a":
            _truncate_torn_tail(self.path)
        self._f = open(self.path, mode, encoding="utf-8")

    def write(self, record: dict) -> None:
        # One write() call per line: a SIGKILL can leave at most one torn line, which readers drop.
        self._f.write(dumps_record(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    """Cut a trailing partial line left by a killed writer, so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline.
        pos = size - 1
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            pos = start
        f.truncate(0)


def read_jsonl(path: str | os.PathLike, *, strict: bool = False) -> Iterator[dict]:
    """Yield records; a torn final line (killed writer) is skipped unless strict."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            torn_tail = n == len(lines) and not line.endswith("\n")
            if torn_tail and not strict:
                return
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from e


class LabelsError(SpeechkdError, ValueError):
    """A labels file that cannot be trained on; the message says how to make a usable one."""


def read_labels(path: str | os.PathLike) -> list[dict]:
    """Records of a labels JSONL (`speechkd label` / `speechkd filter`), relative audio paths resolved against
    the file's folder; a missing or empty file is an error (nothing to train on)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file {path} does not exist; make it with `speechkd label` (and `speechkd filter`)")
    records = []
    for r in read_jsonl(path):
        if r.get("audio") and not Path(r["audio"]).is_absolute():
            r = {**r, "audio": str(path.parent / r["audio"])}
        records.append(r)
    if not records:
        raise LabelsError(f"{path} holds no records: the training set is empty (after filtering?). Lower the "
                          f"filter's threshold/keep-fraction, or label more audio, then train again")
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write a whole JSONL file atomically."""
    return atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in records))


@dataclass(frozen=True)
class OutputPaths:
    """An output file and its siblings: `labels.jsonl` -> `labels.config.yaml`, `labels.summary.json`, ..."""

    out: Path

    @property
    def stem(self) -> Path:
        return self.out.with_suffix("") if self.out.suffix == ".jsonl" else self.out

    def sibling(self, suffix: str) -> Path:
        return self.stem.parent / f"{self.stem.name}.{suffix}"


def cache_dir() -> Path:
    """Where converted teachers and other derived artefacts are cached ($SPEECHKD_CACHE or ~/.cache/speechkd)."""
    root = os.environ.get("SPEECHKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "speechkd")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
