"""Run an exported CTC student with onnxruntime: features, batching, greedy CTC decoding, long-audio chunking.

An export directory holds `config.json` (model type, frontend, sample rate, vocabulary size, blank id,
which ONNX file to load by default), `tokens.txt` ("symbol id" per line, sherpa-onnx's format; "▁"
is a space, the blank is "<blk>") and the ONNX files. The graph takes `x` ([B, T, D] features, or
[B, S] samples for waveform models) and `x_lens` (int64 [B]) and returns `log_probs` ([B, T', V])
and `log_probs_len` (int64 [B]).

Long audio is cut into chunks of at most `max_chunk_s` seconds at the quietest 0.1 s between
`min_chunk_s` and `max_chunk_s` from the previous cut, so a cut lands in a pause rather than in a
word; the chunk transcripts are joined with spaces.

Several onnxruntime calls (batches, or single utterances for dynamic-int8 models) run concurrently, up to
`concurrent_calls` at once (default: num_threads, or the number of cores), each still free to use the
session's intra-op threads. A small model's operators are too short to keep its intra-op threads busy: on
2 cores two concurrent calls ran the 4 M-parameter conformer of benchmarks/export.py 1.7x faster one
utterance per call than one call at a time (1.71 -> 1.03 s of onnxruntime time for 120 utterances;
batches of 8: 1.47 -> 1.34 s; throwaway timings). Batches are split so that every concurrent call gets
one (8 utterances on 2 threads: two batches of 4). Each batch computes its own features, so the numpy
front end of one overlaps the onnxruntime call of another. One call (one short utterance) still gets
every thread, so single-utterance latency is unchanged. Results do not depend on it: each call computes
the same numbers whichever thread makes it.

Decoding is greedy unless a word n-gram LM is given (`lm=`), or config.json has a `decoding` section
(written by `speechkd export --lm`: the ARPA file shipped in the directory and the beam-search settings
tuned for it); then it is CTC prefix beam search with the LM (speechkd_runtime.beam).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .audio import load_audio, to_model_rate
from .beam import BeamSearchOptions, CtcBeamSearch, ids_to_text
from .features import compute_features, num_input_frames, pad_batch
from .errors import RuntimeInputError

CONFIG_FILE = "config.json"
TOKENS_FILE = "tokens.txt"
BLANK_SYMBOL = "<blk>"  # what sherpa-onnx looks for in tokens.txt to find the blank id
# Padding for fbank batches: log(1e-10), the value kaldi/sherpa-onnx pad log-mel features with, so a batch
# decoded here and one decoded by sherpa-onnx see identical inputs. Other frontends pad with zeros.
FBANK_PAD = -23.025850929940457
MIN_TAIL_S = 1.0  # shortest last chunk plan_chunks leaves
REQUIRED_KEYS = ("model_type", "sample_rate", "frontend", "vocab_size", "blank_id")


class ModelDirError(RuntimeInputError):
    """An export directory that cannot be used; the message names the missing or inconsistent file."""


def read_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{model_dir} has no {CONFIG_FILE}: it is not an exported speechkd model "
                            f"(make one with `speechkd export STUDENT_DIR --out DIR`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path}: not valid JSON ({e}); re-export the model") from e
    if not isinstance(config, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return config


def session_options(num_threads: int | None = None):
    """onnxruntime options for every session the runtime opens.

    Intra-op threads do not spin-wait for the next call: between calls the runtime computes features and
    decodes in numpy on the same cores, and spinning threads steal them. On 2 cores this took the CTC int8
    exports of benchmarks/export.py from 1.23x to 1.51x (conformer) and 1.91x to 2.46x (Whisper encoder)
    PyTorch's speed (a PyTorch then slowed by the front end's BLAS threads; see features.BandedFilters).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    return opts


def read_tokens(path: str | os.PathLike) -> list[str]:
    """Symbols by id from a sherpa-onnx style tokens.txt ("symbol id" per line)."""
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: the export directory needs its vocabulary (re-export the model)")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ModelDirError(f"{path}:{n}: expected 'symbol id', got {line!r}")
        idx = int(parts[1])
        if idx in table:
            raise ModelDirError(f"{path}:{n}: id {idx} appears twice")
        table[idx] = parts[0]
    if sorted(table) != list(range(len(table))):
        raise ModelDirError(f"{path}: ids must be 0..{len(table) - 1} without gaps")
    return [table[i] for i in range(len(table))]


def greedy_ids(log_probs: np.ndarray, blank_id: int) -> np.ndarray:
    """Best path: argmax per frame, merge repeats, drop blanks."""
    best = np.asarray(log_probs).argmax(axis=-1)
    if best.size == 0:
        return best
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    best = best[keep]
    return best[best != blank_id]


def pad_value_for(frontend: dict) -> float:
    return FBANK_PAD if frontend.get("kind") == "fbank" else 0.0


def plan_chunks(samples: np.ndarray, sample_rate: int, *, max_chunk_s: float = 30.0,
                min_chunk_s: float = 20.0) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering the audio, each at most max_chunk_s, cut at quiet points.

    Each cut is the centre of the lowest-energy 0.1 s window between min_chunk_s and max_chunk_s after
    the previous cut (also keeping at least MIN_TAIL_S for the last chunk, so no sliver is left over).
    """
    num_samples = len(samples)
    max_len, min_len = int(max_chunk_s * sample_rate), int(min_chunk_s * sample_rate)
    if num_samples <= max_len:
        return [(0, num_samples)]
    win, hop = max(1, sample_rate // 10), max(1, sample_rate // 100)  # 0.1 s energy window, 10 ms step
    tail = int(MIN_TAIL_S * sample_rate)
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    chunks, start = [], 0
    while num_samples - start > max_len:
        lo = start + min_len
        hi = max(lo, min(start + max_len, num_samples - tail) - win)
        window_starts = np.arange(lo, hi + 1, hop)
        window_energy = energy[window_starts + win] - energy[window_starts]
        cut = int(window_starts[int(np.argmin(window_energy))] + win // 2)
        chunks.append((start, cut))
        start = cut
    chunks.append((start, num_samples))
    return chunks


def shipped_decoding(model_dir: str | os.PathLike) -> tuple[str | None, BeamSearchOptions]:
    """config.json's `decoding` section: (the LM file name or None, the beam-search settings)."""
    shipped = dict(read_config(model_dir).get("decoding") or {})
    lm_file = shipped.pop("lm", None)
    known = set(BeamSearchOptions.__dataclass_fields__)
    unknown = set(shipped) - known
    if unknown:
        raise ModelDirError(f"{Path(model_dir) / CONFIG_FILE}: unknown decoding setting(s) {sorted(unknown)}; "
                            f"known: {sorted(known)}")
    return lm_file, BeamSearchOptions(**shipped)


class CtcModel:
    """One exported CTC model on onnxruntime.

        model = CtcModel("exp/ctc/onnx", num_threads=2)
        model.transcribe([samples_16k])          # -> ["hello world"]
        model.transcribe_files(["a.wav", "b.flac"])
    """

    def __init__(self, model_dir: str | os.PathLike, *, model_file: str | None = None,
                 num_threads: int | None = None, providers: Sequence[str] | None = None,
                 max_chunk_s: float = 30.0, min_chunk_s: float = 20.0, lm: str | os.PathLike | None = None,
                 beam: BeamSearchOptions | None = None, greedy: bool = False,
                 concurrent_calls: int | None = None):
        """`lm` (an ARPA file) and `beam` override config.json's `decoding`; `greedy=True` ignores both.
        `concurrent_calls`: onnxruntime calls in flight at once (default num_threads, else the number of cores)."""
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.config = read_config(self.model_dir)
        missing = [k for k in REQUIRED_KEYS if k not in self.config]
        if missing:
            raise ModelDirError(f"{self.model_dir / CONFIG_FILE} lacks {missing}; re-export the model")
        if self.config["model_type"] != "ctc":
            raise ModelDirError(f"{self.model_dir / CONFIG_FILE}: model_type is {self.config['model_type']!r}, "
                                f"not 'ctc'; use speechkd_runtime.transcribe, which dispatches on model_type")
        self.tokens = read_tokens(self.model_dir / self.config.get("tokens", TOKENS_FILE))
        self.vocab_size = int(self.config["vocab_size"])
        self.blank_id = int(self.config["blank_id"])
        if len(self.tokens) != self.vocab_size:
            raise ModelDirError(f"{self.model_dir}: {TOKENS_FILE} has {len(self.tokens)} symbols but {CONFIG_FILE} "
                                f"says vocab_size {self.vocab_size}; the files come from different exports")
        self.frontend = dict(self.config["frontend"])
        self.sample_rate = int(self.config["sample_rate"])
        limit = self.config.get("max_input_seconds")  # e.g. Whisper-encoder students: 30 s of positions
        if limit and max_chunk_s > float(limit):
            max_chunk_s, min_chunk_s = float(limit), min(float(min_chunk_s), 2.0 * float(limit) / 3.0)
        self.max_chunk_s, self.min_chunk_s = float(max_chunk_s), float(min_chunk_s)
        # Shorter inputs give no output frame (and may be rejected by the subsampling convolutions).
        self.min_input_frames = int(self.config.get("min_input_frames", 1))
        if not 0 < self.min_chunk_s < self.max_chunk_s:
            raise ValueError(f"need 0 < min_chunk_s < max_chunk_s, got {min_chunk_s}, {max_chunk_s}")
        self.model_file = model_file or self.config.get("default_model", "model.onnx")
        path = self.model_dir / self.model_file
        if not path.is_file():
            raise ModelDirError(f"{path} is missing; available: {sorted(p.name for p in self.model_dir.glob('*.onnx'))}")
        self.session = ort.InferenceSession(str(path), session_options(num_threads),
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.input_names = [i.name for i in self.session.get_inputs()]
        out_dim = self.session.get_outputs()[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != self.vocab_size:
            raise ModelDirError(f"{path} outputs {out_dim} classes but {CONFIG_FILE} says vocab_size "
                                f"{self.vocab_size}; the files come from different exports")
        self.pad_value = pad_value_for(self.frontend)
        # Dynamic int8 quantises activations with one scale per tensor, taken from the whole batch (padding
        # included), so an utterance's transcript would depend on its batch mates. Such models run one
        # utterance per call: results are then reproducible and identical to sherpa-onnx's single-stream decode.
        quant = self.session.get_modelmeta().custom_metadata_map.get("quantization", "")
        self.batch_independent = quant != "int8-dynamic"
        self.default_batch_size = 8 if self.batch_independent else 1
        self.beam_search = None if greedy else self._beam_search(lm, beam)
        self.concurrent_calls = int(concurrent_calls or num_threads or os.cpu_count() or 1)
        if self.concurrent_calls < 1:
            raise ValueError(f"concurrent_calls must be >= 1, got {concurrent_calls}")

    def _beam_search(self, lm: str | os.PathLike | None, beam: BeamSearchOptions | None) -> CtcBeamSearch | None:
        lm_file, shipped = shipped_decoding(self.model_dir)
        lm_path = Path(lm) if lm is not None else (self.model_dir / lm_file if lm_file else None)
        if lm_path is None and beam is None:
            return None
        from .ngram import NgramLM

        return CtcBeamSearch(self.tokens, self.blank_id, NgramLM(lm_path) if lm_path else None, beam or shipped)

    # ------------------------------------------------------------------------------ building blocks

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Model input for mono float32 samples at self.sample_rate ([T, D] features or [S] samples)."""
        return np.asarray(compute_features(self.frontend, samples), dtype=np.float32)

    def run(self, batch: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One onnxruntime call on a padded batch: (log_probs [B, T', V], log_probs_len [B])."""
        log_probs, out_lens = self.session.run(None, {self.input_names[0]: batch, self.input_names[1]: lens})
        return log_probs, out_lens

    def log_probs(self, features: Sequence[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """Per-item [T'_i, V] log-probabilities (padding frames removed), batched by similar length."""
        return self._run_batches(features, [len(f) for f in features], lambda f: f, batch_size)

    def _run_batches(self, items: Sequence, num_frames: Sequence[int], featurize,
                     batch_size: int | None) -> list[np.ndarray]:
        """Log-probabilities of each item (audio or features; `featurize` turns one into model input of
        `num_frames` frames), in batches of similar length, up to self.concurrent_calls batches at a time.
        Each batch computes its own features, so one batch's numpy front end overlaps another's
        onnxruntime call (both release the GIL)."""
        batch_size = batch_size or self.default_batch_size
        out: list[np.ndarray] = [np.zeros((0, self.vocab_size), np.float32)] * len(items)
        order = sorted((i for i in range(len(items)) if num_frames[i] >= self.min_input_frames),
                       key=lambda i: num_frames[i])
        # Batches of at most batch_size, but small enough that every concurrent call gets one.
        batch_size = max(1, min(batch_size, -(-len(order) // self.concurrent_calls)))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

        def run_batch(idx: list[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
            return (idx, *self.run(*pad_batch([featurize(items[i]) for i in idx], self.pad_value)))

        workers = min(self.concurrent_calls, len(batches))
        if workers > 1:  # InferenceSession.run is thread-safe
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run_batch, batches))
        else:
            results = map(run_batch, batches)
        for idx, log_probs, out_lens in results:
            for j, i in enumerate(idx):
                out[i] = log_probs[j, : int(out_lens[j])]
        return out

    def decode(self, log_probs: np.ndarray) -> str:
        if self.beam_search is not None:
            return self.beam_search.decode(log_probs)
        return ids_to_text(greedy_ids(log_probs, self.blank_id), self.tokens)

    # ------------------------------------------------------------------------------ transcription

    def transcribe(self, audios: Sequence[np.ndarray], sample_rate: int | None = None,
                   batch_size: int | None = None) -> list[str]:
        """Transcripts of mono float32 arrays (at sample_rate, default the model's); long ones are chunked."""
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for k, audio in enumerate(audios):
            x = to_model_rate(audio, rate, self.sample_rate)
            spans = plan_chunks(x, self.sample_rate, max_chunk_s=self.max_chunk_s, min_chunk_s=self.min_chunk_s)
            for a, b in spans:
                pieces.append(x[a:b])
                owner.append(k)
        frames = [num_input_frames(self.frontend, len(p)) for p in pieces]
        texts: list[list[str]] = [[] for _ in audios]
        for k, lp in zip(owner, self._run_batches(pieces, frames, self.features, batch_size)):
            texts[k].append(self.decode(lp))
        return [" ".join(t for t in parts if t) for parts in texts]

    def transcribe_files(self, paths: Sequence[str | os.PathLike], batch_size: int | None = None) -> list[str]:
        return self.transcribe([load_audio(p, self.sample_rate) for p in paths], batch_size=batch_size)
