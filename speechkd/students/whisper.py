"""Distil-Whisper students: a Whisper teacher with layers removed, trained to imitate the teacher.

A student keeps the teacher's full architecture width, tokenizer, convolutional front end,
embeddings and layer norms, and a maximally spaced subset of its layers (first and last always
kept, as in Distil-Whisper's ``create_student_model_from_teacher``). Keeping the whole encoder and
two decoder layers is the Distil-Whisper recipe: decoding is dominated by the sequential decoder,
and an encoder copied whole keeps the representation the teacher's decoder was trained on.

Because a student shares the teacher's tokenizer it can also serve as the *assistant* in
speculative decoding: the student drafts tokens, the teacher verifies them in one forward pass, and
the output is exactly the teacher's greedy transcript, only faster (:class:`SpeculativeRecognizer`).

    from speechkd.students.whisper import create_student, save_whisper_student
    student = create_student("bundled:base", decoder_layers=2)
    save_whisper_student(student, student.speechkd_processor, "exp/base-2dec")

Usage (CLI): speechkd student create --teacher bundled:base --decoder-layers 2 --out exp/base-2dec
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speechkd.students import StudentError, StudentType, is_student_dir, load_student, register_student
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.guards import RAW_GREEDY, WhisperGuards

log = logging.getLogger(__name__)

PROCESSOR_ATTR = "speechkd_processor"  # the WhisperProcessor travels with the in-memory student
_LAYER_KEY = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class WhisperStudentConfig:
    """A Whisper student cut from ``teacher`` (or from a smaller pretrained Whisper, ``pretrained``).

    encoder_layers / decoder_layers: how many layers to keep, maximally spaced; None keeps all (the
    Distil-Whisper default keeps the whole encoder and 2 decoder layers).
    init_from: a saved student dir (``speechkd student create`` or a finished run) to start from
    instead of slicing the teacher again; its layer counts and vocabulary must match this config
    and the teacher.
    pretrained: start from this pretrained Whisper instead of the teacher (a teacher spec such as
    ``bundled:tiny.en``, a Hub id or a saved dir), keeping its own width, tokenizer and the layers
    asked for. A smaller model of the same family is the cheapest way to a fast student on a CPU,
    where the encoder dominates; if its tokenizer differs from the teacher's (English-only vs
    multilingual Whisper), it can learn only from the pseudo-labels (sequence-level distillation,
    ``kl_weight: 0``), not from the teacher's token distributions.
    """

    teacher: str = "bundled:tiny.en"  # the Whisper to cut the student from (bundled:base, HF dir, CT2 dir, Hub id)
    encoder_layers: int | None = None  # encoder layers kept, maximally spaced; None: all
    decoder_layers: int | None = 2  # decoder layers kept, maximally spaced (Distil-Whisper: 2); None: all
    init_from: str | None = None  # a saved student dir to start from instead of slicing the teacher again
    pretrained: str | None = None  # start from this smaller Whisper instead (e.g. bundled:tiny.en); its layers

    def validate(self) -> None:
        for stack, n in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers)):
            if n is not None and n < 1:
                raise ValueError(f"{stack}_layers={n}: a Whisper student needs at least 1 {stack} layer, or null "
                                 "to keep all")
        if self.init_from and self.pretrained:
            raise ValueError("set init_from (a saved student to continue) or pretrained (a Whisper to start from), "
                             "not both")


# --- layer selection and initialisation ---------------------------------------------------------------


def select_layers(teacher_layers: int, student_layers: int, *, stack: str = "decoder") -> list[int]:
    """Maximally spaced teacher layer indices: first and last always kept (one layer keeps the last).

    6 -> 2 gives [0, 5]; 6 -> 3 gives [0, 2, 5]; 32 -> 2 gives [0, 31] (Distil-Whisper's choice).
    """
    if student_layers < 1:
        raise StudentError(f"{stack}_layers={student_layers}: a student needs at least 1 {stack} layer")
    if student_layers > teacher_layers:
        raise StudentError(f"{stack}_layers={student_layers} but the teacher has only {teacher_layers} {stack} "
                           f"layers; choose {stack}_layers <= {teacher_layers}")
    picked = np.linspace(0, teacher_layers - 1, student_layers).astype(int)
    # The last layer feeds the final layer norm and (for the decoder) the output projection: always keep it.
    picked[-1] = teacher_layers - 1
    return [int(i) for i in picked]


def _as_teacher(teacher: Any):
    from speechkd.teachers import WhisperTeacher, load_whisper

    if isinstance(teacher, WhisperTeacher):
        return teacher
    if isinstance(teacher, (str, os.PathLike)):
        return load_whisper(teacher)
    raise StudentError(f"teacher must be a WhisperTeacher or a teacher spec such as 'bundled:tiny.en', "
                       f"got {type(teacher).__name__}")


def create_student(teacher: Any, encoder_layers: int | None = None, decoder_layers: int | None = 2):
    """A ``WhisperForConditionalGeneration`` initialised from ``teacher`` (a WhisperTeacher or a spec).

    None keeps all of a stack's layers. Every layer count is checked before the teacher weights are
    loaded. The student carries the teacher's processor as ``model.speechkd_processor`` and a generation config whose alignment heads
    point at the kept decoder layers.
    """
    from transformers import WhisperForConditionalGeneration

    teacher = _as_teacher(teacher)
    tcfg = teacher.config
    enc_map = select_layers(tcfg.encoder_layers, tcfg.encoder_layers if encoder_layers is None else encoder_layers,
                            stack="encoder")
    dec_map = select_layers(tcfg.decoder_layers, tcfg.decoder_layers if decoder_layers is None else decoder_layers,
                            stack="decoder")

    tmodel = teacher.model
    scfg = copy.deepcopy(tmodel.config)
    scfg.encoder_layers = len(enc_map)
    scfg.decoder_layers = len(dec_map)
    scfg.num_hidden_layers = len(enc_map)
    student = WhisperForConditionalGeneration(scfg)
    teacher_sd = tmodel.state_dict()
    maps = {"encoder": enc_map, "decoder": dec_map}
    new_sd = {}
    for key in student.state_dict():
        m = _LAYER_KEY.match(key)
        src = f"model.{m[1]}.layers.{maps[m[1]][int(m[2])]}.{m[3]}" if m else key
        new_sd[key] = teacher_sd[src]
    student.load_state_dict(new_sd, strict=True)
    student.to(dtype=next(tmodel.parameters()).dtype).eval()
    student.generation_config = _student_generation_config(tmodel.generation_config, dec_map)
    setattr(student, PROCESSOR_ATTR, teacher.processor)
    student.speechkd_layer_map = maps  # which teacher layer each student layer came from (for reports)
    log.info("student from %s: encoder layers %s, decoder layers %s", teacher.name, enc_map, dec_map)
    return student


def _student_generation_config(teacher_gen, dec_map: list[int]):
    """The teacher's generation config with alignment heads renumbered onto the kept decoder layers.

    Alignment heads (cross-attention heads that track time, used for word timestamps) only exist in
    the layers that were kept; if none were, they are dropped and word timestamps are unavailable
    until new heads are found for the student.
    """
    gen = copy.deepcopy(teacher_gen)
    heads = getattr(gen, "alignment_heads", None)
    if heads:
        kept = [[dec_map.index(int(layer)), int(head)] for layer, head in heads if int(layer) in dec_map]
        if not kept:
            log.warning("none of the teacher's alignment heads lie in the kept decoder layers %s; the student "
                        "has no alignment heads (word-level timestamps are unavailable)", dec_map)
        gen.alignment_heads = kept or None
    return gen


def save_whisper_student(model, processor, out_dir: str | os.PathLike) -> Path:
    """save_pretrained (safetensors) + processor + generation config into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # safetensors is transformers' default; writes generation_config.json too
    processor.save_pretrained(out)
    return out


def load_whisper_student(model_dir: str | os.PathLike):
    """A saved Whisper student (or any save_pretrained Whisper dir) with its processor attached."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise StudentError(f"{path} has no config.json: not a saved Whisper model (make one with "
                           "`speechkd student create` or save_whisper_student)")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    setattr(model, PROCESSOR_ATTR, WhisperProcessor.from_pretrained(path))
    return model


def _processor_of(model):
    proc = getattr(model, PROCESSOR_ATTR, None)
    if proc is None:
        raise StudentError("this Whisper model has no processor attached; build it with create_student or "
                           "load it with load_whisper_student")
    return proc


def vocab_difference(teacher_config, teacher_tokenizer, student_config, student_tokenizer) -> str | None:
    """How a student's token ids differ from the teacher's (None: the same), in words for an error."""
    tv, sv = teacher_config.vocab_size, student_config.vocab_size
    if tv != sv:
        return f"vocab_size {sv} vs the teacher's {tv}"
    if student_tokenizer is not None and teacher_tokenizer is not None \
            and student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        return "a different tokenizer vocabulary"
    return None


def _check_same_vocab(teacher_model, teacher_tokenizer, student_model, student_tokenizer, what: str) -> None:
    """A student must speak the teacher's token ids: token-level KD and speculative decoding compare them."""
    problem = vocab_difference(teacher_model.config, teacher_tokenizer, student_model.config, student_tokenizer)
    if problem:
        raise StudentError(f"{what} has {problem}; a Whisper student must share its teacher's tokenizer "
                           "(create it from this teacher with `speechkd student create`)")


# --- the registered student type ----------------------------------------------------------------------


def _build(cfg: WhisperStudentConfig, teacher: Any = None, vocab: Any = None):
    if vocab is not None:
        raise StudentError("Whisper students use the teacher's tokenizer; do not pass a vocabulary "
                           "(remove make_vocab from this task or pick a CTC student type)")
    if cfg.pretrained:
        # The run's teacher is not involved: the task checks what the pair can share (vocabulary, width).
        return create_student(cfg.pretrained, cfg.encoder_layers, cfg.decoder_layers)
    teacher = _as_teacher(teacher if teacher is not None else cfg.teacher)
    if cfg.init_from is None:
        return create_student(teacher, cfg.encoder_layers, cfg.decoder_layers)
    src = Path(cfg.init_from)
    model = load_student(src) if is_student_dir(src) else load_whisper_student(src)
    tcfg = teacher.config
    want = (tcfg.encoder_layers if cfg.encoder_layers is None else cfg.encoder_layers,
            tcfg.decoder_layers if cfg.decoder_layers is None else cfg.decoder_layers)
    have = (model.config.encoder_layers, model.config.decoder_layers)
    if want != have:
        raise StudentError(f"init_from {src} has {have[0]} encoder / {have[1]} decoder layers but the student "
                           f"config asks for {want[0]} / {want[1]}; set encoder_layers: {have[0]} and "
                           f"decoder_layers: {have[1]}")
    _check_same_vocab(teacher.model, teacher.tokenizer, model, _processor_of(model).tokenizer, f"init_from {src}")
    return model


def _save(model, out_dir: Path) -> None:
    save_whisper_student(model, _processor_of(model), out_dir)


def _load(model_dir: Path, cfg: WhisperStudentConfig):
    return load_whisper_student(model_dir)


# --- recognisers ----------------------------------------------------------------------------------------


def teacher_from_model(model, processor, name: str = "whisper", hf_dir: str | os.PathLike | None = None):
    """A WhisperTeacher around a model held in memory (a student mid-training), for its decoding code.

    WhisperTeacher loads its parts lazily from ``hf_dir``; filling the loaded parts in up front makes
    it decode with this exact model object (same device and dtype) and never touch the disk.
    """
    from speechkd.teachers import WhisperTeacher
    from speechkd.teachers.whisper_tokens import MULTILINGUAL_MIN_VOCAB

    param = next(model.parameters())
    gen = model.generation_config
    multilingual = getattr(gen, "is_multilingual", None)
    if multilingual is None:
        multilingual = model.config.vocab_size >= MULTILINGUAL_MIN_VOCAB
    teacher = WhisperTeacher(name, "in-memory", hf_dir=Path(hf_dir) if hf_dir else None, ct2_dir=None,
                             is_multilingual=bool(multilingual), device=str(param.device), dtype=param.dtype)
    teacher._model, teacher._processor, teacher._generation_config = model, processor, gen
    return teacher


class WhisperModelRecognizer:
    """Greedy (or beam) decoding of an in-memory Whisper model through transformers, batched.

    Puts the model in eval mode for the call and restores its previous mode, so it can run between
    training steps.
    """

    def __init__(self, model, processor=None, *, name: str = "whisper-student", batch_size: int = 8,
                 language: str | None = "en", model_dir: str | os.PathLike | None = None,
                 guards: WhisperGuards | None = None):
        self.model = model
        self.guards = guards  # None: the default hallucination guards (speechkd_runtime.guards)
        self.teacher = teacher_from_model(model, processor or _processor_of(model), name, model_dir)
        self.batch_size = batch_size
        self.language = language
        self.model_dir = Path(model_dir) if model_dir else None
        self.name = f"{name} [transformers]"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.teacher.transcribe(list(audios), backend="transformers", batch_size=self.batch_size,
                                           language=self.language, guards=self.guards)
        finally:
            self.model.train(was_training)

    def num_parameters(self) -> int | None:
        from speechkd.metrics import count_parameters

        return count_parameters(self.model)

    def size_bytes(self) -> int | None:
        from speechkd.metrics import bytes_on_disk

        if self.model_dir is not None and list(self.model_dir.glob("*.safetensors")):
            return bytes_on_disk(sorted(self.model_dir.glob("*.safetensors")))
        # In memory: what the weights would take on disk (tied embeddings counted once).
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def _recognizer(model, **kwargs: Any) -> WhisperModelRecognizer:
    kwargs.setdefault("name", "whisper-student")
    return WhisperModelRecognizer(model, **kwargs)


register_student(StudentType(
    name="whisper",
    config_cls=WhisperStudentConfig,
    build=_build,
    save=_save,
    load=_load,
    recognizer=_recognizer,
    description="Distil-Whisper: a Whisper teacher with maximally spaced layers kept (seq2seq, teacher tokenizer)",
))


# --- speculative decoding -------------------------------------------------------------------------------


class SpeculativeRecognizer:
    """The teacher's greedy transcripts, decoded faster with a student drafting tokens (assisted generation).

    HF's assisted generation verifies the draft with one teacher forward over several tokens and keeps
    the longest prefix the teacher agrees with, so the output equals the teacher's greedy output (up to
    float ties). It decodes one clip at a time: HF supports assisted generation at batch size 1 only.
    """

    def __init__(self, teacher_model, assistant_model, processor, *, name: str = "whisper-speculative",
                 language: str | None = "en"):
        assistant_proc = getattr(assistant_model, PROCESSOR_ATTR, None)
        _check_same_vocab(teacher_model, processor.tokenizer, assistant_model,
                          assistant_proc.tokenizer if assistant_proc is not None else None, "the assistant model")
        self.teacher = teacher_from_model(teacher_model, processor, name)
        self.assistant = assistant_model
        self.language = language
        self.name = f"{name} [transformers, assisted]"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        tok = self.teacher.tokenizer
        return [tok.decode(ids, skip_special_tokens=True).strip() for ids in self.generate_token_ids(audios)]

    def generate_token_ids(self, audios: Sequence[np.ndarray]) -> list[list[int]]:
        """Generated ids per clip (no prompt, no end-of-text), as WhisperTeacher.generate_token_ids."""
        from transformers.generation import GenerationMixin
        from transformers.utils import logging as hf_logging

        from speechkd.teachers.whisper import DecodeOptions, check_audio

        t = self.teacher
        options = DecodeOptions(language=t.language_code(self.language) if t.is_multilingual else None)
        if t.is_multilingual and options.language is None:
            raise ValueError("speculative decoding needs a fixed language for multilingual models")
        prompt = torch.tensor([t.prompt_ids(options.language)], device=t.device)
        # The candidate generator grows this mask with the sequence and _prefill slices the assistant's input to
        # the tokens its cache lacks by it; without one the assistant re-feeds its whole prefix on top of its
        # cache every round (garbage drafts, and past max_target_positions an IndexError in transformers 5.25).
        prompt_mask = torch.ones_like(prompt)
        models = (t.model, self.assistant)
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        # HF's candidate generator calls `assistant.generate`, which for Whisper is the long-form wrapper
        # (it re-adds prompts and re-seeks on timestamps); the draft must come from the plain loop the
        # teacher uses, so the plain method shadows the wrapper on this instance while we decode.
        self.assistant.generate = types.MethodType(GenerationMixin.generate, self.assistant)
        # Each draft round re-warns that max_new_tokens overrides max_length: silence that for the call.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        out = []
        try:
            for i, audio in enumerate(audios):
                features = torch.from_numpy(t.features([check_audio(audio, i)])).to(device=t.device, dtype=t.dtype)
                with torch.inference_mode():
                    seq = GenerationMixin.generate(
                        t.model, input_features=features, decoder_input_ids=prompt, decoder_attention_mask=prompt_mask,
                        generation_config=t.model_generation_config, assistant_model=self.assistant,
                        max_new_tokens=t.new_token_limit(options), num_beams=1, do_sample=False,
                        forced_decoder_ids=None,
                    )
                out.append(t.strip_prompt(seq[0].tolist(), prompt[0].tolist()))
        finally:
            hf_logging.set_verbosity(verbosity)
            del self.assistant.generate
            for m, mode in zip(models, modes):
                m.train(mode)
        return out

    def num_parameters(self) -> int | None:
        from speechkd.metrics import count_parameters

        return count_parameters(self.teacher.model) + count_parameters(self.assistant)

    def size_bytes(self) -> int | None:
        return sum(p.numel() * p.element_size() for m in (self.teacher.model, self.assistant) for p in m.parameters())


def _as_student_model(student: Any):
    if isinstance(student, (str, os.PathLike)):
        return load_student(student) if is_student_dir(student) else load_whisper_student(student)
    return student


def compare_speculative(teacher: Any, student: Any, audios: Sequence[np.ndarray]) -> dict:
    """Teacher greedy vs speculative decoding with ``student`` as assistant, one clip at a time each.

    Returns the number of clips whose speculative transcript equals the teacher's greedy one, the
    seconds each took (after a warm-up call), the speed ratio and the differing clips. Also times the
    student alone, for reference.
    """
    teacher = _as_teacher(teacher)
    student_model = _as_student_model(student)
    spec = SpeculativeRecognizer(teacher.model, student_model, teacher.processor)
    # Assisted generation is plain greedy decoding: compare (and time) it with the same, unguarded.
    greedy = WhisperModelRecognizer(teacher.model, teacher.processor, name=teacher.name, batch_size=1,
                                    guards=RAW_GREEDY)
    alone = WhisperModelRecognizer(student_model, teacher.processor, name="student", batch_size=1, guards=RAW_GREEDY)
    warm = [np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)]
    results, seconds = {}, {}
    for key, rec in (("teacher", greedy), ("speculative", spec), ("student", alone)):
        rec.transcribe(warm)
        t0 = time.perf_counter()
        results[key] = rec.transcribe(list(audios))
        seconds[key] = time.perf_counter() - t0
    same = [a == b for a, b in zip(results["teacher"], results["speculative"])]
    return {
        "num_clips": len(audios),
        "identical": int(sum(same)),
        "teacher_seconds": round(seconds["teacher"], 3),
        "speculative_seconds": round(seconds["speculative"], 3),
        "student_seconds": round(seconds["student"], 3),
        "speedup": round(seconds["teacher"] / max(seconds["speculative"], 1e-9), 3),
        "torch_threads": torch.get_num_threads(),
        "mismatches": [{"index": i, "teacher": results["teacher"][i], "speculative": results["speculative"][i]}
                       for i, ok in enumerate(same) if not ok],
    }
