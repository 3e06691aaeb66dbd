"""What every CTC student shares: the model contract, the Recognizer (decoding with the on-device runtime's
greedy or LM beam search, so PyTorch and ONNX transcripts come from the same code), save/load, registration.

The contract (kept by every family, relied on by ONNX export and the on-device runtime):
``model(x, x_lens) -> (log_probs [B, T', V] float32 log-softmaxed, out_lens [B] int64)`` where x is
[B, T, D] features (or [B, S] waveform) computed by ``speechkd_runtime.features.compute_features(
model.frontend, samples)``; masks come from lengths with tensor ops only, so torch.onnx.export can make
batch and time dynamic. Attributes: ``frontend`` (dict), ``vocab`` (:class:`speechkd.vocab.Vocabulary`),
``subsampling_factor`` (input frames per output frame).

A saved CTC student is a directory with model.safetensors, config.json (:func:`ctc_model_config`, also
read by the runtime), tokens.txt (+ vocab.json) and speechkd_student.json (written by save_student).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from speechkd.io import atomic_write_bytes, atomic_write_json
from speechkd.students import StudentError, StudentType, register_student
from speechkd.vocab import Vocabulary
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.beam import BeamSearchOptions, CtcBeamSearch
from speechkd_runtime.ctc import greedy_ids
from speechkd_runtime.features import compute_features, frame_rate_hz, num_input_frames, pad_batch, validate_frontend
from speechkd_runtime.ngram import NgramLM

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CTCModel(nn.Module):
    """Base class of CTC students; subclasses implement forward and output_lengths."""

    frontend: dict
    vocab: Vocabulary
    subsampling_factor: int
    # Longest input the architecture accepts (Whisper's positional table covers 30 s); None: unlimited.
    max_input_seconds: float | None = None

    def __init__(self, frontend: dict, vocab: Vocabulary, subsampling_factor: int):
        super().__init__()
        self.frontend = validate_frontend(frontend)
        self.vocab = vocab
        self.subsampling_factor = int(subsampling_factor)

    def output_lengths(self, in_lens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Architecture details a loader needs beyond the student config (saved in config.json)."""
        return {}

    def num_output_frames(self, num_samples: int) -> int:
        """Output frames for an utterance of num_samples audio samples (no features computed)."""
        n = num_input_frames(self.frontend, num_samples)
        return int(self.output_lengths(torch.tensor([n], dtype=torch.int64))[0])

    # -- layers: the interface of the encoder teachers (speechkd.teachers.encoders), for layer-wise methods --

    num_layers: int  # L: valid layer indices are 0..L (0 = the input of the first block, L = the final output)
    hidden_size: int

    @property
    def frame_rate_hz(self) -> float:
        """Output frames per second of audio (fbank students 25, Whisper-encoder and wav2vec2 students 50)."""
        return frame_rate_hz(self.frontend) / self.subsampling_factor  # the runtime function: input frames/s

    def hidden_states(self, x: torch.Tensor, x_lens: torch.Tensor, layers: list[int]):
        """({layer: [B, T', hidden_size]}, out_lens) for non-negative `layers`; forward() is the CTC head on
        layer L. Padded frames may hold anything (forward, and so the ONNX graph, does no extra masking)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor, layers: Sequence[int] | int | None = None):
        """The chosen layers' hidden states with valid lengths and the frame rate, as an
        :class:`~speechkd.teachers.encoders.EncoderOutput` (padded frames zeroed), with gradients."""
        from speechkd.teachers.encoders import EncoderOutput, layer_indices

        chosen = layer_indices(layers, self.num_layers, type(self).__name__, StudentError)
        hidden, lens = self.hidden_states(x, x_lens, chosen)
        valid = length_mask(lens, next(iter(hidden.values())).shape[1])[:, :, None]
        return EncoderOutput(hidden={i: hidden[i].masked_fill(~valid, 0.0) for i in chosen}, lengths=lens,
                             frame_rate_hz=self.frame_rate_hz)


def require_vocab(vocab: Any, student_type: str) -> Vocabulary:
    if vocab is None:
        raise StudentError(f"student {student_type} needs a vocabulary: build it with speechkd.vocab.build_vocabulary"
                           f" (the ctc task does this from the labels) and pass vocab=")
    if not isinstance(vocab, Vocabulary):
        raise StudentError(f"student {student_type}: vocab must be a speechkd.vocab.Vocabulary, got {type(vocab).__name__}")
    return vocab


def length_mask(lengths: torch.Tensor, max_len: int | torch.Tensor, device=None) -> torch.Tensor:
    """[B, max_len] bool, True on valid positions (tensor ops only: ONNX-exportable with dynamic shapes)."""
    return torch.arange(max_len, device=device or lengths.device)[None, :] < lengths[:, None]


class CTCRecognizer:
    """A CTC student behind the speechkd.evaluate Recognizer protocol (features -> batch -> CTC decoding).

    Greedy decoding, or prefix beam search with a word n-gram when `lm` (an ARPA file) or `beam` is given:
    the same search (speechkd_runtime.beam) the on-device runtime runs on ONNX outputs.
    """

    def __init__(self, model: CTCModel, batch_size: int = 8, name: str | None = None, device: str | None = None,
                 lm: str | os.PathLike | None = None, beam: BeamSearchOptions | None = None):
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.device = device or next(model.parameters()).device
        kind = getattr(model, "student_type", type(model).__name__)
        self.beam_search = None
        if lm is not None or beam is not None:
            self.beam_search = CtcBeamSearch(model.vocab.tokens, model.vocab.blank_id,
                                             NgramLM(lm) if lm is not None else None, beam or BeamSearchOptions())
        suffix = "" if self.beam_search is None else (" + LM" if lm is not None else " beam")
        self.name = name or f"{kind} [torch{suffix}]"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        # Audio longer than the architecture allows is cut into pieces whose texts are joined.
        pieces, owner = [], []
        limit = self.model.max_input_seconds
        step = int(limit * self.model.frontend.get("sample_rate", SAMPLE_RATE_HZ)) if limit else None
        for i, a in enumerate(audios):
            a = np.asarray(a, dtype=np.float32)
            chunks = [a[s: s + step] for s in range(0, len(a), step)] if step and len(a) > step else [a]
            pieces.extend(chunks)
            owner.extend([i] * len(chunks))
        texts = self._transcribe_pieces(pieces)
        out = [[] for _ in audios]
        for i, t in zip(owner, texts):
            if t:
                out[i].append(t)
        return [" ".join(parts) for parts in out]

    def log_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per clip [T', V] log-probabilities (float32; [0, V] for clips too short for one output frame)."""
        model = self.model
        was_training = model.training
        model.eval()
        feats = [compute_features(model.frontend, np.asarray(a, dtype=np.float32)) for a in audios]
        out = [np.zeros((0, len(model.vocab.tokens)), np.float32)] * len(feats)
        # Clips too short for a single output frame (a few ms) give no frames without running the model.
        runnable = [i for i, f in enumerate(feats) if model.output_lengths(torch.tensor([len(f)]))[0] > 0]
        try:
            with torch.inference_mode():
                for start in range(0, len(runnable), self.batch_size):
                    idx = runnable[start: start + self.batch_size]
                    x, lens = pad_batch([feats[i] for i in idx])
                    log_probs, out_lens = model(torch.from_numpy(x).to(self.device), torch.from_numpy(lens).to(self.device))
                    lp = log_probs.float().cpu().numpy()
                    for j, i in enumerate(idx):
                        out[i] = lp[j, : int(out_lens[j])]
        finally:
            model.train(was_training)
        return out

    def _transcribe_pieces(self, audios: list[np.ndarray]) -> list[str]:
        if self.beam_search is not None:
            return [self.beam_search.decode(lp) for lp in self.log_probs(audios)]
        vocab = self.model.vocab
        return [vocab.decode(greedy_ids(lp, vocab.blank_id)) for lp in self.log_probs(audios)]

    def num_parameters(self) -> int | None:
        from speechkd.metrics import count_parameters

        return count_parameters(self.model)

    def size_bytes(self) -> int | None:
        source = getattr(self.model, "source_dir", None)
        if source is not None and (Path(source) / WEIGHTS_FILE).is_file():
            from speechkd.metrics import bytes_on_disk

            return bytes_on_disk(Path(source) / WEIGHTS_FILE)
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())


# --------------------------------------------------------------------------------------------- files


def ctc_model_config(model: CTCModel) -> dict:
    """config.json of a saved CTC student: everything the runtime needs besides the weights and tokens.txt."""
    fe = model.frontend
    return {
        "model_type": "ctc",
        "student_type": getattr(model, "student_type", None),
        "vocab_size": len(model.vocab),
        "vocab_kind": model.vocab.kind,
        "blank_id": model.vocab.blank_id,
        "frontend": dict(fe),
        "sample_rate": int(fe.get("sample_rate", SAMPLE_RATE_HZ)),
        "subsampling_factor": int(model.subsampling_factor),
        "output_frame_rate_hz": frame_rate_hz(fe) / model.subsampling_factor,
        "max_input_seconds": model.max_input_seconds,
        **model.extra_config(),
    }


def save_ctc_model(model: CTCModel, out_dir: Path) -> None:
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Clone so no two entries share storage (safetensors refuses aliased tensors).
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    model.vocab.save(out)
    atomic_write_json(out / CONFIG_FILE, ctc_model_config(model))


def read_ctc_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise StudentError(f"{model_dir} has no {CONFIG_FILE}; save CTC students with speechkd.students.save_student")
    saved = json.loads(path.read_text())
    if saved.get("model_type") != "ctc":
        raise StudentError(f"{path}: model_type is {saved.get('model_type')!r}, not 'ctc'")
    return saved


def load_ctc_model(model_dir: Path, cfg: Any, from_saved: Callable[[Any, Vocabulary, dict], CTCModel]) -> CTCModel:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    saved = read_ctc_config(model_dir)
    vocab = Vocabulary.load(model_dir)
    if len(vocab) != saved["vocab_size"]:
        raise StudentError(f"{model_dir}: tokens.txt has {len(vocab)} tokens but config.json says "
                           f"vocab_size {saved['vocab_size']}; the directory mixes files from two models")
    model = from_saved(cfg, vocab, saved)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise StudentError(f"{model_dir} has no {WEIGHTS_FILE}")
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.source_dir = model_dir
    return model.eval()


def register_ctc_student(name: str, config_cls: type, build: Callable[..., CTCModel],
                         from_saved: Callable[[Any, Vocabulary, dict], CTCModel], description: str = "") -> StudentType:
    """Register a CTC family: shared save/load/recognizer, family-specific build and rebuild-from-disk."""
    return register_student(StudentType(
        name=name, config_cls=config_cls, build=build, save=save_ctc_model,
        load=lambda model_dir, cfg: load_ctc_model(model_dir, cfg, from_saved),
        recognizer=lambda model, **kw: CTCRecognizer(model, **kw), description=description,
    ))
