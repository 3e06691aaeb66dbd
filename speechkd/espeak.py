"""The espeak-ng engine behind speechkd.synth: loading it, keeping it deterministic, and a fallback.

Kept apart from the corpus logic (speakers, planning, rendering, workers) because it is the only part
that touches native code. libespeak-ng is found through ``espeakng_loader`` and driven through ctypes.
Its wave generator keeps state across utterances (pitch-flutter phase, gain control, libc ``rand()``),
so :class:`_LibraryEngine` loads a private copy of the library (nobody else in the process can pin it),
reloads it before every utterance and seeds both random generators: each clip then depends only on
(text, speaker, seed). Machines with the ``espeak-ng`` command but not the library get
:class:`_BinaryEngine`, a fresh process per utterance. ``SPEECHKD_ESPEAK_BACKEND`` (auto | library |
binary) picks one. Everything is importable from ``speechkd.synth`` too.

The public surface is :func:`speak`, :func:`load_engine`, :func:`espeak_version` and :func:`check_voices`;
they take anything with a speaker's voice fields (:class:`Voice`), so this module needs nothing from
``speechkd.synth`` (which builds on it).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from speechkd.io import atomic_write_bytes, cache_dir
from speechkd.errors import SpeechkdError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- constants

ESPEAK_SAMPLE_RATE_HZ = 22050  # what libespeak-ng produces; we resample to the config's rate
BACKEND_ENV = "SPEECHKD_ESPEAK_BACKEND"  # auto | library | binary

# speak_lib.h values used through ctypes
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_EE_OK = 0

_INSTALL_HINT = ("install espeak-ng: `pip install espeakng-loader` (ships libespeak-ng and its voice data) "
                 "or `apt-get install espeak-ng`")


class EspeakError(SpeechkdError, RuntimeError):
    """espeak-ng is missing, cannot load, or rejected a voice/text; the message says which and how to fix it."""


class Voice(Protocol):
    """The fields of a speaker the engine reads; ``speechkd.synth.Speaker`` has them.

    A structural type rather than Speaker itself, so the engine does not depend on the corpus module that
    is built on it. ``id`` only names the speaker in error messages.
    """

    @property
    def id(self) -> str: ...
    @property
    def voice(self) -> str: ...  # language[+variant], e.g. en-us+f2
    @property
    def rate(self) -> int: ...  # words per minute
    @property
    def pitch(self) -> int: ...  # 0..99
    @property
    def pitch_range(self) -> int: ...  # 0..99


# --------------------------------------------------------------------------------------------- espeak-ng


_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _LibraryEngine:
    """libespeak-ng through ctypes, reloaded per utterance so no state leaks between utterances.

    dlclose only unloads a library nobody else holds, so we load a private copy of the file: another
    component that loaded libespeak-ng in this process cannot pin our copy's state.
    """

    name = "library"

    def __init__(self, lib_path: str, data_path: str):
        self.data_path = data_path
        self.lib_path = _private_copy(lib_path)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK_TYPE(self._on_audio)  # must outlive every synthesis
        self._lib = None
        self._open()
        self.version = self._lib.espeak_Info(None).decode()

    def _on_audio(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def _open(self) -> None:
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as e:
            raise EspeakError(f"cannot load libespeak-ng from {self.lib_path}: {e}; {_INSTALL_HINT}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate != ESPEAK_SAMPLE_RATE_HZ:
            raise EspeakError(f"libespeak-ng failed to initialise (returned {rate}) with data at {self.data_path}; "
                              f"reinstall it: {_INSTALL_HINT}")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _reload(self) -> None:
        import _ctypes

        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
            self._lib = None
        self._open()

    def synth(self, text: str, sp: Voice, rand_seed: int) -> np.ndarray:
        self._reload()
        lib = self._lib
        if lib.espeak_SetVoiceByName(sp.voice.encode()) != _EE_OK:
            raise EspeakError(f"espeak-ng has no voice {sp.voice!r} (speaker {sp.id}); see `espeak-ng --voices=en` "
                              "for languages and espeak-ng-data/voices/!v for variants")
        for param, value in ((_ESPEAK_RATE, sp.rate), (_ESPEAK_PITCH, sp.pitch), (_ESPEAK_RANGE, sp.pitch_range)):
            lib.espeak_SetParameter(param, value, 0)
        # Breath noise (whisper-like variants) uses libc rand(); newer espeak also has its own generator.
        _libc().srand(ctypes.c_uint(rand_seed & 0xFFFFFFFF))
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed(ctypes.c_long(rand_seed & 0x7FFFFFFF))
        data = text.encode("utf-8")
        self._chunks = []
        status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed (status {status}) for speaker {sp.id} on {text[:60]!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def variants(self) -> set[str] | None:
        vdir = Path(self.data_path) / "voices" / "!v"
        return {p.name for p in vdir.iterdir()} if vdir.is_dir() else None


class _BinaryEngine:
    """The `espeak-ng` command, for machines with the Debian package but not the PyPI library.

    Each call is a fresh process, so it is deterministic for free, but ~10x slower than the library.
    """

    name = "binary"

    def __init__(self, exe: str):
        self.exe = exe
        try:
            version, helptext = (subprocess.run([exe, flag], capture_output=True, text=True, timeout=30).stdout
                                 for flag in ("--version", "--help"))
        except (OSError, subprocess.SubprocessError) as e:
            raise EspeakError(f"cannot run {exe}: {e}; {_INSTALL_HINT}") from e
        self.version = (version.strip().splitlines() or ["?"])[0]
        self._has_range = "-P <integer>" in helptext  # pitch range: only newer espeak-ng commands have it

    def synth(self, text: str, sp: Voice, rand_seed: int) -> np.ndarray:
        import soundfile as sf

        cmd = [self.exe, "-v", sp.voice, "-s", str(sp.rate), "-p", str(sp.pitch), "-b", "1"]
        if self._has_range:
            cmd += ["-P", str(sp.pitch_range)]
        with tempfile.TemporaryDirectory(prefix="speechkd-espeak-") as tmp:
            wav = os.path.join(tmp, "out.wav")
            proc = subprocess.run([*cmd, "-w", wav, "--stdin"], input=text.encode("utf-8"), capture_output=True,
                                  timeout=120)
            if proc.returncode != 0 or not os.path.exists(wav):
                err = proc.stderr.decode(errors="replace").strip()
                raise EspeakError(f"{self.exe} failed for speaker {sp.id} (voice {sp.voice!r}): "
                                  f"{err or proc.returncode}")
            audio, rate = sf.read(wav, dtype="int16")
        if audio.ndim > 1:
            audio = audio[:, 0]
        if rate != ESPEAK_SAMPLE_RATE_HZ:
            raise EspeakError(f"{self.exe} wrote {rate} Hz audio; expected {ESPEAK_SAMPLE_RATE_HZ}")
        return audio

    def variants(self) -> set[str] | None:
        return None


_ENGINE = None
_ENGINE_LOCK = threading.Lock()
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt
    return _LIBC


def _private_copy(lib_path: str) -> str:
    """A per-content copy of the library in the cache (shared by processes, private to our handle)."""
    try:
        digest = hashlib.sha256(Path(lib_path).read_bytes()).hexdigest()[:16]
        dest = cache_dir() / "espeak" / f"{digest}-{Path(lib_path).name}"
        if not dest.exists():
            atomic_write_bytes(dest, Path(lib_path).read_bytes())
        return str(dest)
    except OSError as e:  # read-only home: fall back to the original (deterministic unless someone else loads it)
        log.warning("could not copy libespeak-ng to the cache (%s); using %s directly", e, lib_path)
        return lib_path


def _make_engine():
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower()
    if choice not in ("auto", "library", "binary"):
        raise EspeakError(f"{BACKEND_ENV}={choice!r}; use auto, library or binary")
    problems = []
    if choice in ("auto", "library"):
        try:
            import espeakng_loader

            return _LibraryEngine(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
        except ImportError:
            problems.append("espeakng-loader is not installed")
        except (EspeakError, RuntimeError, OSError) as e:
            problems.append(str(e))
    if choice in ("auto", "binary"):
        exe = shutil.which("espeak-ng")
        if exe:
            return _BinaryEngine(exe)
        problems.append("no espeak-ng command on PATH")
    raise EspeakError(f"espeak-ng is not available ({'; '.join(problems)}); {_INSTALL_HINT}")


def _engine():
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _make_engine()
    return _ENGINE


def load_engine() -> None:
    """Pick and load the engine now (it is otherwise loaded on first use), so a missing espeak-ng fails early."""
    with _ENGINE_LOCK:
        _engine()


def speak(text: str, sp: Voice, rand_seed: int) -> np.ndarray:
    """`text` spoken as `sp`: int16 mono PCM at ESPEAK_SAMPLE_RATE_HZ, a function of (text, voice, seed) only.

    Serialised by a process-wide lock: the engine is a single global native state, reloaded per utterance.
    """
    with _ENGINE_LOCK:
        return _engine().synth(text, sp, rand_seed)


def espeak_version() -> str:
    """Which espeak-ng (and backend) this process synthesises with, e.g. ``library 1.52.0``."""
    with _ENGINE_LOCK:
        eng = _engine()
        return f"{eng.name} {eng.version}"


def check_voices(voices: Iterable[Voice]) -> None:
    """Fail now, naming the speaker, if espeak-ng lacks a voice (it silently ignores unknown variants)."""
    with _ENGINE_LOCK:
        eng = _engine()
        known = eng.variants()
        for sp in voices:
            variant = sp.voice.partition("+")[2]
            if known is not None and variant and variant not in known:
                close = sorted(v for v in known if v.lower().startswith(variant[:1].lower()))[:12]
                raise EspeakError(f"speaker {sp.id}: espeak-ng has no voice variant {variant!r} (voice {sp.voice!r}); "
                                  f"variants starting alike: {close}")
            eng.synth("test", sp, 0)  # unknown languages fail here
