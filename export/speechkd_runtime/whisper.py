"""Run a Whisper model exported by speechkd (encoder.onnx + decoder.onnx with KV cache) on onnxruntime.

numpy + onnxruntime only: log-mel features from speechkd_runtime.features (the implementation the
training side uses), token-by-token decoding with the self-attention cache carried between decoder
calls, and byte-level BPE ids -> text with GPT-2's bytes-to-unicode table. Each step follows the rules
transformers' greedy ``generate`` applies for a Whisper model: the prompt from config.json
(<|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>), suppressed tokens at every step,
"begin" suppressed tokens at the first step, stop at <|endoftext|>. Around that, the hallucination guards
of speechkd_runtime.guards (temperature fallback, a token budget from the audio's duration, a repetition
rule) are on by default, as in every speechkd Whisper path; ``guards=RAW_GREEDY`` is plain greedy decoding
with at most ``max_new_tokens`` tokens.

Audio longer than 30 s is cut into chunks of at most 30 s at quiet points (the CTC runtime's chunk
planner) and each chunk is decoded as its own window; chunk transcripts are joined with spaces.

    from speechkd_runtime.whisper import WhisperModel, transcribe
    text = transcribe("exp/base-2dec/onnx", samples_16k)                # fp32 graphs
    model = WhisperModel("exp/base-2dec/onnx", variant="int8", num_threads=2)
    texts = model.transcribe([a, b])
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .audio import SAMPLE_RATE_HZ, load_audio, to_model_rate
from .ctc import ModelDirError, plan_chunks, read_config, session_options
from .features import whisper_log_mel
from .guards import (
    NO_SPEECH_TOKENS,
    Attempt,
    GuardedResult,
    WhisperGuards,
    audio_key,
    decode_with_fallback,
    greedy_loop,
)

REQUIRED_KEYS = ("model_type", "n_mels", "decoder_layers", "d_model", "vocab_size", "eot", "prompt",
                 "max_new_tokens", "files", "tokens")
MIN_CHUNK_SECONDS = 20.0  # a long-audio cut is searched for between 20 s and 30 s after the previous one


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map from the printable characters byte-level BPE stores back to bytes.

    Printable Latin-1 bytes stand for themselves; the other 68 byte values (controls, space, ...) were
    shifted to code points 256.. in order, so a token is always a visible string.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = list(keep)
    shifted = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def ids_to_text(ids: Sequence[int], tokens: Sequence[str], first_special_id: int) -> str:
    """Concatenate the tokens of non-special ids, map characters back to bytes, decode UTF-8."""
    table = byte_decoder()
    text = "".join(tokens[i] for i in ids if 0 <= i < first_special_id)
    raw = bytes(table[c] for c in text if c in table)
    return raw.decode("utf-8", errors="replace").strip()


class WhisperModel:
    """An exported Whisper model on onnxruntime (fp32 or int8 graphs)."""

    def __init__(self, model_dir: str | os.PathLike, *, variant: str | None = None, num_threads: int | None = None,
                 providers: Sequence[str] | None = None, guards: WhisperGuards | None = None):
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.config = read_config(self.model_dir)
        cfg_path = self.model_dir / "config.json"
        missing = [k for k in REQUIRED_KEYS if k not in self.config]
        if missing:
            raise ModelDirError(f"{cfg_path} lacks {missing}; re-export the model with export_whisper")
        if self.config["model_type"] != "whisper":
            raise ModelDirError(f"{cfg_path}: model_type is {self.config['model_type']!r}, not 'whisper'")
        self.variant = variant or self.config.get("default_variant", "fp32")
        files = self.config["files"].get(self.variant)
        if files is None:
            raise ModelDirError(f"{self.model_dir} has no {self.variant!r} variant; available: "
                                f"{sorted(self.config['files'])}")
        tokens_path = self.model_dir / self.config["tokens"]
        if not tokens_path.is_file():
            raise ModelDirError(f"{tokens_path} is missing: the export needs its token table (re-export the model)")
        self.tokens: list[str] = json.loads(tokens_path.read_text(encoding="utf-8"))
        if len(self.tokens) != int(self.config["vocab_size"]):
            raise ModelDirError(f"{tokens_path} has {len(self.tokens)} tokens but config.json says vocab_size "
                                f"{self.config['vocab_size']}; the files come from different exports")
        opts = session_options(num_threads)
        providers = list(providers or ["CPUExecutionProvider"])
        sessions = {}
        for role in ("encoder", "decoder"):
            path = self.model_dir / files[role]
            if not path.is_file():
                raise ModelDirError(f"{path} is missing; re-export the model")
            sessions[role] = ort.InferenceSession(str(path), opts, providers=providers)
        self.encoder, self.decoder = sessions["encoder"], sessions["decoder"]
        self._encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        # int8 graphs from exports before per-row activation scales ("int8_activation_scales" absent) quantise
        # activations with one scale per tensor over the whole batch, so a clip's transcript would depend on
        # its batch mates: they decode one clip per call (as dynamic-int8 CTC exports do). Per-row ones batch.
        self.batch_independent = (self.variant != "int8"
                                  or self.config.get("int8_activation_scales") == "per_row")
        self.default_batch_size = 8 if self.batch_independent else 1
        self._decoder_inputs = {i.name for i in self.decoder.get_inputs()}
        self.sample_rate = int(self.config.get("sample_rate", SAMPLE_RATE_HZ))
        self.chunk_seconds = float(self.config.get("chunk_seconds", 30))
        self.n_mels = int(self.config["n_mels"])
        self.eot = int(self.config["eot"])
        self.first_special_id = int(self.config.get("first_special_id", self.eot))
        self.max_new_tokens = int(self.config["max_new_tokens"])
        self.suppress = np.array(self.config.get("suppress_tokens", []), dtype=np.int64)
        self.begin_suppress = np.array(self.config.get("begin_suppress_tokens", []), dtype=np.int64)
        self.no_speech_id = next((self.tokens.index(t) for t in NO_SPEECH_TOKENS if t in self.tokens), None)
        # Format 1 stacked every layer's cross K/V as [L, B, 1500, D]; format 2 has one [B, ...] input per layer.
        self._cross_batch_axis = 1 if int(self.config.get("format_version", 2)) == 1 else 0
        self.guards = WhisperGuards() if guards is None else guards

    # ------------------------------------------------------------------------------ building blocks

    def features(self, samples: np.ndarray) -> np.ndarray:
        """[n_mels, 3000] log-mel of at most 30 s of 16 kHz audio (zero-padded to 30 s, as Whisper expects)."""
        return whisper_log_mel(samples, self.n_mels, pad_to_seconds=self.chunk_seconds).T

    def prompt(self, language: str | None = None) -> list[int]:
        prompt = [int(t) for t in self.config["prompt"]]
        if language is not None and self.config.get("is_multilingual"):
            lang = self.config.get("languages", {}).get(language)
            if lang is None:
                raise ValueError(f"language {language!r} is not in this model's languages "
                                 f"({sorted(self.config.get('languages', {}))[:10]}...)")
            prompt[1] = int(lang)
        return prompt

    def _encode(self, mel: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(the encoder outputs the decoder takes, by name: per-layer cross K/V, or stacked ones in format 1;
        an empty self-attention cache for the batch)."""
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        cross = {name: value for name, value in zip(self._encoder_outputs, self.encoder.run(None, {"mel": mel}))
                 if name in self._decoder_inputs}
        layers, d_model = int(self.config["decoder_layers"]), int(self.config["d_model"])
        return cross, np.zeros((layers, mel.shape[0], 0, d_model), dtype=np.float32)

    def logits(self, mel: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Decoder logits [B, T, V] for whole token sequences [B, T] (prompt included), in one call with an
        empty cache: what `speechkd verify` compares with PyTorch."""
        cross, empty = self._encode(mel)
        return self.decoder.run(None, {"tokens": np.asarray(tokens, dtype=np.int64), "self_k": empty,
                                       "self_v": empty, **cross})[0]

    def generate(self, mel: np.ndarray, language: str | None = None, *, seconds: Sequence[float] | None = None,
                 guards: WhisperGuards | None = None, keys: Sequence[int] | None = None) -> list[list[int]]:
        """Token ids (no prompt, no end-of-text) for a batch of features [B, n_mels, 3000]; see generate_guarded."""
        return [r.ids for r in self.generate_guarded(mel, language, seconds=seconds, guards=guards, keys=keys)]

    def generate_guarded(self, mel: np.ndarray, language: str | None = None, *,
                         seconds: Sequence[float] | None = None, guards: WhisperGuards | None = None,
                         keys: Sequence[int] | None = None) -> list[GuardedResult]:
        """Guarded decoding (speechkd_runtime.guards) of a batch of features [B, n_mels, 3000]: the encoder runs
        once, each temperature of the fallback decodes only the rows that still need it. ``seconds`` is each
        row's audio duration, for the token budget (default: a full window); ``guards`` defaults to the model's
        (``RAW_GREEDY`` reproduces plain greedy decoding); ``keys`` seed each row's sampling (see
        speechkd_runtime.guards.audio_key; default: the row's index)."""
        guards = self.guards if guards is None else guards
        batch = mel.shape[0]
        cross, _ = self._encode(mel)
        seconds = [self.chunk_seconds] * batch if seconds is None else list(seconds)
        budgets = [guards.budget(s, self.max_new_tokens) for s in seconds]
        prompt = np.array(self.prompt(language), dtype=np.int64)
        layers, d_model = int(self.config["decoder_layers"]), int(self.config["d_model"])

        def decode(rows: list[int], temperature: float, row_budgets: list[int], rngs) -> list[Attempt]:
            sub = {name: np.take(value, rows, axis=self._cross_batch_axis) for name, value in cross.items()}
            cache = {"self_k": np.zeros((layers, len(rows), 0, d_model), dtype=np.float32)}
            cache["self_v"] = cache["self_k"]

            def step(tokens: np.ndarray) -> np.ndarray:
                logits, cache["self_k"], cache["self_v"] = self.decoder.run(
                    None, {"tokens": tokens, "self_k": cache["self_k"], "self_v": cache["self_v"], **sub})
                return logits

            return greedy_loop(step, np.tile(prompt, (len(rows), 1)), row_budgets, eot=self.eot,
                               suppress=self.suppress, begin_suppress=self.begin_suppress, temperature=temperature,
                               rngs=rngs, guards=guards, no_speech_id=self.no_speech_id)

        return decode_with_fallback(decode, budgets, self.decode, guards, keys)

    def decode(self, ids: Sequence[int]) -> str:
        return ids_to_text(ids, self.tokens, self.first_special_id)

    # ------------------------------------------------------------------------------ transcription

    def transcribe(self, audios: Sequence[np.ndarray], sample_rate: int | None = None, batch_size: int | None = None,
                   language: str | None = None) -> list[str]:
        """Transcripts of mono float32 arrays (at sample_rate, default 16 kHz); long ones are chunked."""
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for k, audio in enumerate(audios):
            x = to_model_rate(np.asarray(audio, dtype=np.float32), rate, self.sample_rate)
            spans = plan_chunks(x, self.sample_rate, max_chunk_s=self.chunk_seconds,
                                min_chunk_s=min(MIN_CHUNK_SECONDS, self.chunk_seconds / 2))
            for a, b in spans:
                pieces.append(x[a:b])
                owner.append(k)
        texts: list[list[str]] = [[] for _ in audios]
        batch_size = batch_size or self.default_batch_size
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start:start + batch_size]
            ids = self.generate(np.stack([self.features(p) for p in chunk]), language,
                                seconds=[len(p) / self.sample_rate for p in chunk], keys=[audio_key(p) for p in chunk])
            for k, seq in zip(owner[start:start + batch_size], ids):
                texts[k].append(self.decode(seq))
        return [" ".join(t for t in parts if t) for parts in texts]


_CACHE: dict[tuple, WhisperModel] = {}


def load(model_dir: str | os.PathLike, **kwargs: Any) -> WhisperModel:
    """A WhisperModel, cached per directory and options so repeated calls do not reload the sessions."""
    key = (os.fspath(Path(model_dir).resolve()), tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = WhisperModel(model_dir, **kwargs)
    return _CACHE[key]


def transcribe(model_dir: str | os.PathLike, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None,
               language: str | None = None, **kwargs: Any) -> str:
    """Transcript of one file, or of float32 samples (16 kHz unless sample_rate says otherwise).

    kwargs go to WhisperModel (variant="int8", num_threads=2, ...).
    """
    model = load(model_dir, **kwargs)
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is read from the file; pass it only with an array")
        samples = load_audio(audio, model.sample_rate)
    else:
        samples = to_model_rate(np.asarray(audio, dtype=np.float32), sample_rate or model.sample_rate,
                                model.sample_rate)
    return model.transcribe([samples], language=language)[0]
