"""Whisper teachers: one object, two decoding backends, four ways to name the weights.

``load_whisper`` accepts ``bundled:<name>``, a CTranslate2 dir, a local ``save_pretrained`` dir or a
Hub id, and resolves all of them to local directories *before* any audio is touched, so a typo or a
missing package fails in the first second of a labelling job rather than after it. The returned
:class:`WhisperTeacher` keeps both forms of the weights within reach:

* the ``transformers`` model, needed for logits, hidden states and student initialisation;
* a ``ctranslate2`` model for bulk pseudo-labelling (faster per clip on CPU, especially with
  ``compute_type="int8"``, and lighter on memory).

A CTranslate2 teacher is converted to HF once at load (cached); an HF teacher is converted to
CTranslate2 the first time that backend is used (cached). Both backends compute the same log-mel
features with the same feature extractor and decode from the same explicit prompt tokens, so their
outputs differ only by numerics.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from speechkd.io import atomic_directory, atomic_write_json
from speechkd.io import cache_dir as default_cache_dir
from speechkd.teachers.bundled import (
    BUNDLED_PREFIX,
    BUNDLED_TEACHERS,
    CT2_MODEL_FILE,
    TeacherLoadError,
    bundled_name,
    file_sha256,
    is_bundled_spec,
    read_json,
    resolve_bundled,
)
from speechkd.teachers.ct2 import CACHE_KEY_HEX_CHARS, convert_ct2_to_transformers
from speechkd.teachers.whisper_tokens import (
    EOT_TOKEN,
    MULTILINGUAL_MIN_VOCAB,
    NO_TIMESTAMPS_TOKEN,
    SOT_TOKEN,
    TASK_TOKENS,
    TOKENIZER_FILE,
    WHISPER_MAX_TARGET_TOKENS,
)
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.guards import (
    NO_SPEECH_TOKENS,
    Attempt,
    DecodeBatch,
    GuardedResult,
    WhisperGuards,
    audio_key,
    decode_with_fallback,
    greedy_loop,
    limit_attempt,
)

MAX_INPUT_SECONDS = 30.0  # one Whisper window; long-form (chunked) decoding is not implemented yet
HF_CONFIG_FILE = "config.json"
HF_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
CT2_FROM_HF_SUBDIR = "ct2"
CT2_CONVERSION_MARKER = "speechkd_ct2_conversion.json"
CT2_FILES_TO_COPY = ("tokenizer.json", "preprocessor_config.json")
# Hub files a Whisper teacher needs; weights only as safetensors or (torch weights_only-loaded) .bin.
HUB_ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "pytorch_model*.bin")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# "default" keeps the stored precision where the device supports it (fp16 weights run as fp32 on CPU), so
# both backends see the same weights; "int8" is the faster choice for bulk labelling on CPU.
DEFAULT_CT2_COMPUTE_TYPE = "default"
Backend = Literal["transformers", "ctranslate2"]
BACKENDS = ("transformers", "ctranslate2")


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode one batch; shared by both backends so they follow identical rules."""

    language: str | None = "en"
    task: str = "transcribe"
    beam_size: int = 1
    max_new_tokens: int | None = None
    # Hallucination guards (speechkd_runtime.guards): on by default; RAW_GREEDY for exact comparisons. Beam search
    # (beam_size > 1) on the transformers backend is transformers' own and unguarded.
    guards: WhisperGuards = WhisperGuards()


class WhisperTeacher:
    """A Whisper model usable through ``transformers`` and ``ctranslate2``, loaded lazily.

    Attributes: ``name`` (what the user asked for), ``revision`` (weights digest or Hub commit, for
    label provenance), ``ct2_dir`` / ``hf_dir`` (local weights; ``ct2_dir`` is filled on first use
    of the ctranslate2 backend for HF-only teachers), ``is_multilingual``.
    """

    def __init__(
        self,
        name: str,
        revision: str,
        *,
        hf_dir: Path,
        ct2_dir: Path | None,
        is_multilingual: bool,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        compute_type: str = DEFAULT_CT2_COMPUTE_TYPE,
        cpu_threads: int = 0,
        cache_root: Path | None = None,
    ):
        self.name = name
        self.revision = revision
        self.hf_dir = hf_dir
        self.ct2_dir = ct2_dir
        self.is_multilingual = is_multilingual
        self.device = device
        self.dtype = dtype
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.cache_root = cache_root
        self._model = None
        self._processor = None
        self._ct2_model = None
        self._generation_config = None
        self._config = None
        self._vocab: dict[str, int] | None = None

    def __repr__(self) -> str:
        return (f"WhisperTeacher(name={self.name!r}, revision={self.revision!r}, "
                f"multilingual={self.is_multilingual}, hf_dir={str(self.hf_dir)!r}, ct2_dir={self.ct2_dir!s})")

    # --- lazily loaded parts --------------------------------------------------------------------

    @property
    def model(self):
        """``WhisperForConditionalGeneration`` in eval mode on ``device``/``dtype``."""
        if self._model is None:
            from transformers import WhisperForConditionalGeneration

            model = WhisperForConditionalGeneration.from_pretrained(self.hf_dir)
            self._model = model.to(device=self.device, dtype=self.dtype).eval()
        return self._model

    @property
    def config(self):
        """The ``WhisperConfig``, read from config.json without loading the weights when they are not loaded."""
        if self._model is not None:
            return self._model.config
        if self._config is None:
            from transformers import WhisperConfig

            self._config = WhisperConfig.from_pretrained(self.hf_dir)
        return self._config

    @property
    def processor(self):
        if self._processor is None:
            from transformers import WhisperProcessor

            self._processor = WhisperProcessor.from_pretrained(self.hf_dir)
        return self._processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def vocab(self) -> dict[str, int]:
        """Token -> id, built once (``get_vocab()`` rebuilds a 50k-entry dict on every call)."""
        if self._vocab is None:
            self._vocab = self.tokenizer.get_vocab()
        return self._vocab

    @property
    def ct2_model(self):
        """``ctranslate2.models.Whisper``; an HF-only teacher is converted into the cache first."""
        if self._ct2_model is None:
            try:
                import ctranslate2
            except ImportError as e:
                raise TeacherLoadError("the ctranslate2 backend needs: pip install 'speechkd[ct2]'") from e
            if self.ct2_dir is None:
                self.ct2_dir = _ensure_ct2_from_hf(self.hf_dir, self.cache_root)
            device, index = _ct2_device(self.device)
            self._ct2_model = ctranslate2.models.Whisper(
                str(self.ct2_dir), device=device, device_index=index,
                # 0 would mean CTranslate2's own default (4 threads), oversubscribing small machines:
                # follow torch's thread count instead, which respects OMP_NUM_THREADS and the core count.
                compute_type=self.compute_type, intra_threads=self.cpu_threads or torch.get_num_threads(),
            )
        return self._ct2_model

    # --- decoding -------------------------------------------------------------------------------

    def transcribe(
        self,
        audios: Sequence[np.ndarray],
        *,
        backend: Backend = "transformers",
        batch_size: int = 8,
        language: str | None = "en",
        task: str = "transcribe",
        beam_size: int = 1,
        max_new_tokens: int | None = None,
        guards: WhisperGuards | None = None,
    ) -> list[str]:
        """Transcribe 16 kHz mono float32 clips of at most 30 s each, in batches.

        English-only models ignore ``language`` and ``task``. For multilingual models
        ``language=None`` detects the language per clip.
        """
        token_ids = self.generate_token_ids(
            audios, backend=backend, batch_size=batch_size, language=language, task=task,
            beam_size=beam_size, max_new_tokens=max_new_tokens, guards=guards,
        )
        return [self.text(ids) for ids in token_ids]

    def generate_token_ids(
        self,
        audios: Sequence[np.ndarray],
        *,
        backend: Backend = "transformers",
        batch_size: int = 8,
        language: str | None = "en",
        task: str = "transcribe",
        beam_size: int = 1,
        max_new_tokens: int | None = None,
        guards: WhisperGuards | None = None,
    ) -> list[list[int]]:
        """Generated token ids per clip: no prompt, no end-of-text (what labelling stores).

        ``guards`` (default: ``WhisperGuards()``, openai/whisper's rules) are the hallucination guards; pass
        ``speechkd_runtime.guards.RAW_GREEDY`` for plain greedy decoding."""
        return [r.ids for r in self.generate_guarded(audios, backend=backend, batch_size=batch_size, language=language,
                                                     task=task, beam_size=beam_size, max_new_tokens=max_new_tokens,
                                                     guards=guards)]

    def generate_guarded(
        self,
        audios: Sequence[np.ndarray],
        *,
        backend: Backend = "transformers",
        batch_size: int = 8,
        language: str | None = "en",
        task: str = "transcribe",
        beam_size: int = 1,
        max_new_tokens: int | None = None,
        guards: WhisperGuards | None = None,
    ) -> list[GuardedResult]:
        """As generate_token_ids, with what the guards did per clip (temperature, fallbacks, cut, no_speech)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")
        if batch_size < 1 or beam_size < 1:
            raise ValueError(f"batch_size and beam_size must be >= 1 (got {batch_size}, {beam_size})")
        clips = [check_audio(a, i) for i, a in enumerate(audios)]
        options = DecodeOptions(
            language=self.language_code(language) if self.is_multilingual else None,
            task=self.check_task(task),
            beam_size=beam_size,
            max_new_tokens=max_new_tokens,
            guards=WhisperGuards() if guards is None else guards,
        )
        out: list[GuardedResult] = []
        for start in range(0, len(clips), batch_size):
            batch = clips[start:start + batch_size]
            seconds = [len(c) / SAMPLE_RATE_HZ for c in batch]
            out.extend(self.generate_batch(self.features(batch), seconds, options, backend,
                                            keys=[audio_key(c) for c in batch]))
        return out

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def features(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel features ``[batch, n_mels, 3000]`` from the HF feature extractor (both backends)."""
        fe = self.processor.feature_extractor
        batch = fe(list(clips), sampling_rate=SAMPLE_RATE_HZ, return_tensors="np")
        return np.ascontiguousarray(batch["input_features"], dtype=np.float32)

    def prompt_ids(self, language: str | None, task: str = "transcribe") -> list[int]:
        """Decoder prompt: <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>."""
        vocab = self.vocab
        prompt = [vocab[SOT_TOKEN]]
        if self.is_multilingual:
            if language is None:
                raise ValueError("a multilingual prompt needs a language (detect it first)")
            prompt += [vocab[f"<|{language}|>"], vocab[TASK_TOKENS[task]]]
        prompt.append(vocab[NO_TIMESTAMPS_TOKEN])
        return prompt

    def generate_batch(self, features: np.ndarray, seconds: Sequence[float], options: DecodeOptions,
                        backend: Backend, keys: Sequence[int] | None = None) -> list[GuardedResult]:
        """Decode one padded feature batch under the guards; the single place each backend is called."""
        budgets = [options.guards.budget(s, self.new_token_limit(options)) for s in seconds]
        if backend == "transformers":
            if options.beam_size > 1:  # transformers' beam search, unguarded (see DecodeOptions)
                return [_unguarded(ids) for ids in self._generate_transformers(features, options)]
            decode = self._decoder_transformers(features, options)
        else:
            decode = self._decoder_ctranslate2(features, options)
        return decode_with_fallback(decode, budgets, self.text, options.guards, keys)

    def new_token_limit(self, options: DecodeOptions) -> int:
        """openai-whisper's rule, which ctranslate2 applies too: sample at most half the decoder context."""
        limit = int(self.model_generation_config.max_length or WHISPER_MAX_TARGET_TOKENS) // 2
        return limit if options.max_new_tokens is None else min(limit, options.max_new_tokens)

    def _generate_transformers(self, features: np.ndarray, options: DecodeOptions) -> list[list[int]]:
        """Plain ``GenerationMixin.generate`` from explicit prompts, not Whisper's ``generate`` wrapper.

        The wrapper adds long-form segmentation: a timestamp token in the output (which random or
        confused models do emit even after <|notimestamps|>) makes it re-seek and decode again, so
        outputs and lengths stop matching ctranslate2's single-window decode. One <=30 s window wants
        the plain loop, with the same prompt, suppression and length limit as the ctranslate2 call.
        """
        from transformers.generation import GenerationMixin

        model = self.model
        inputs = torch.from_numpy(features).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            if self.is_multilingual and options.language is None:
                languages = self.detect_language_hf(inputs)
            else:
                languages = [options.language] * len(features)
            prompts = torch.tensor([self.prompt_ids(lang, options.task) for lang in languages], device=self.device)
            # One config carrying every option: generate() warns on each call when options come both as a config
            # and as arguments, and when max_new_tokens meets the saved config's max_length (448). The limit is
            # therefore given as max_length, which counts the prompt: the same stopping point.
            gen = copy.deepcopy(self.model_generation_config)
            gen.update(max_length=prompts.shape[1] + self.new_token_limit(options), max_new_tokens=None,
                       num_beams=options.beam_size, do_sample=False, forced_decoder_ids=None)
            sequences = GenerationMixin.generate(model, input_features=inputs, decoder_input_ids=prompts,
                                                 generation_config=gen)
        return [self.strip_prompt(seq.tolist(), prompt.tolist()) for seq, prompt in zip(sequences, prompts)]

    def _suppressed(self) -> tuple[np.ndarray, np.ndarray]:
        """Tokens suppressed at every step and at the first step, as transformers' Whisper generation does."""
        gen = self.model_generation_config
        return (np.array(sorted(set(gen.suppress_tokens or [])), dtype=np.int64),
                np.array(sorted(set(gen.begin_suppress_tokens or [])), dtype=np.int64))

    def _no_speech_id(self) -> int | None:
        vocab = self.vocab
        return next((vocab[t] for t in NO_SPEECH_TOKENS if t in vocab), None)

    def _decoder_transformers(self, features: np.ndarray, options: DecodeOptions) -> DecodeBatch:
        """A DecodeBatch over the HF model: the encoder runs once, each temperature decodes a subset of rows with
        the KV cache, token by token (speechkd_runtime.guards.greedy_loop: the runtime's loop, over torch)."""
        model = self.model
        inputs = torch.from_numpy(features).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            encoded = model.model.encoder(inputs).last_hidden_state
            languages = (self.detect_language_hf(inputs) if self.is_multilingual and options.language is None
                         else [options.language] * len(features))
        prompts = np.array([self.prompt_ids(lang, options.task) for lang in languages], dtype=np.int64)
        suppress, begin_suppress = self._suppressed()
        no_speech_id = self._no_speech_id()

        def decode(rows: list[int], temperature: float, budgets: list[int], rngs) -> list[Attempt]:
            with torch.inference_mode():
                return greedy_loop(hf_decoder_step(model, encoded[rows]), prompts[rows], budgets,
                                   eot=self.vocab[EOT_TOKEN], suppress=suppress, begin_suppress=begin_suppress,
                                   temperature=temperature, rngs=rngs, guards=options.guards,
                                   no_speech_id=no_speech_id)

        return decode

    def _decoder_ctranslate2(self, features: np.ndarray, options: DecodeOptions) -> DecodeBatch:
        """A DecodeBatch over CTranslate2's greedy generate, the budget and the repetition rule applied to its
        output (generate takes one length limit per batch); sampled fallbacks run on the transformers weights."""
        import ctranslate2

        model = self.ct2_model
        encoded = np.asarray(model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
        if self.is_multilingual and options.language is None:
            view = ctranslate2.StorageView.from_array(encoded)
            languages = [pairs[0][0][2:-2] for pairs in model.detect_language(view)]
        else:
            languages = [options.language] * len(features)
        prompts = [self.prompt_ids(lang, options.task) for lang in languages]
        cap = self.new_token_limit(options)
        suppress = list(self.model_generation_config.suppress_tokens or [])

        def generate(rows: list[int], budgets: list[int], limit: int, **sampling) -> list[Attempt]:
            # ctranslate2 reads max_length as the context size and samples at most half of it.
            results = model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[rows])), [prompts[i] for i in rows],
                max_length=2 * limit, suppress_blank=True, suppress_tokens=suppress,
                return_scores=True, return_no_speech_prob=True, **sampling)
            attempts = []
            for r, i, budget in zip(results, rows, budgets):
                ids = self.strip_prompt(r.sequences_ids[0], prompts[i])
                # faster-whisper's reading of the score: the length-normalised sum over the text tokens.
                attempt = Attempt(ids, float(r.scores[0]) * max(1, len(ids)), float(r.no_speech_prob))
                attempts.append(limit_attempt(attempt, budget, cap, options.guards))
            return attempts

        sampler: dict = {}

        def decode(rows: list[int], temperature: float, budgets: list[int], rngs) -> list[Attempt]:
            # A clip's result must not depend on its batch mates: the batched pass decodes up to the window's
            # limit whatever the others' budgets, and each row is then cut to its own.
            if temperature == 0:
                return generate(rows, budgets, cap, beam_size=options.beam_size, sampling_topk=1)
            # Sampled fallbacks run on the transformers weights: ctranslate2's seed reaches only worker threads
            # it has not started yet, so its sampling cannot be reproduced, and labels must resume exactly.
            if not sampler:  # the rows of the first fallback include every later one: encode them once
                sampler.update(rows=list(rows), decode=self._decoder_transformers(features[rows], options))
            return sampler["decode"]([sampler["rows"].index(r) for r in rows], temperature, budgets, rngs)

        return decode

    def detect_language_hf(self, inputs: torch.Tensor) -> list[str]:
        ids = self.model.detect_language(input_features=inputs, generation_config=self.model_generation_config)
        return [tok[2:-2] for tok in self.tokenizer.convert_ids_to_tokens(ids.view(-1).tolist())]

    @property
    def model_generation_config(self):
        """The saved generation config, read without loading the HF weights (the ct2 path needs it)."""
        if self._generation_config is None:
            from transformers import GenerationConfig

            self._generation_config = GenerationConfig.from_pretrained(self.hf_dir)
        return self._generation_config

    def strip_prompt(self, ids: list[int], prompt: list[int]) -> list[int]:
        """Drop the echoed prompt (HF returns it) and everything from the first end-of-text on."""
        if ids[: len(prompt)] == prompt:
            ids = ids[len(prompt):]
        eot = self.vocab[EOT_TOKEN]
        return ids[: ids.index(eot)] if eot in ids else list(ids)

    def language_code(self, language: str | None) -> str | None:
        if language is None:
            return None
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = language.lower().strip("<|>")
        code = TO_LANGUAGE_CODE.get(code, code)
        if f"<|{code}|>" not in self.vocab:
            raise ValueError(
                f"language={language!r} is not a language of teacher {self.name!r}; use a code such as 'en'"
            )
        return code

    def check_task(self, task: str) -> str:
        if task not in TASK_TOKENS:
            raise ValueError(f"task={task!r}; choose one of {tuple(TASK_TOKENS)}")
        return task


def hf_decoder_step(model, encoder_hidden: torch.Tensor):
    """``step(tokens [B, T]) -> logits [B, T, V]`` over a transformers Whisper decoder with its KV cache, for
    speechkd_runtime.guards.greedy_loop: the first call takes the prompt, later ones one token per row."""
    from transformers.modeling_outputs import BaseModelOutput

    encoder_out = BaseModelOutput(last_hidden_state=encoder_hidden)
    # transformers 5 names the cache argument `cache` (`past_key_values` is deprecated); 4.x knows only the latter.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    state = {key: None}

    def step(tokens: np.ndarray) -> np.ndarray:
        out = model(encoder_outputs=encoder_out, decoder_input_ids=torch.from_numpy(tokens).to(encoder_hidden.device),
                    use_cache=True, **state)
        state[key] = getattr(out, key)
        return out.logits.float().cpu().numpy()

    return step


def _unguarded(ids: list[int]) -> GuardedResult:
    return GuardedResult(Attempt(ids, 0.0), temperature=0.0, fallbacks=0, compression_ratio=0.0, no_speech=False,
                         cut=None)


def check_audio(audio: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"audio {index}: expected a 1-D float array of 16 kHz mono samples, got dtype {arr.dtype} shape {arr.shape}"
        )
    seconds = arr.shape[0] / SAMPLE_RATE_HZ
    if seconds > MAX_INPUT_SECONDS:
        raise ValueError(
            f"audio {index} is {seconds:.1f} s long; Whisper teachers take at most {MAX_INPUT_SECONDS:.0f} s per "
            "clip for now (long-form decoding is not implemented): split it into shorter segments first"
        )
    return arr.astype(np.float32, copy=False)


def _ct2_device(device: str) -> tuple[str, int]:
    kind, _, index = str(device).partition(":")
    return ("cuda" if kind == "cuda" else "cpu"), int(index or 0)


# --- loading ------------------------------------------------------------------------------------


def load_whisper(
    spec: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    compute_type: str = DEFAULT_CT2_COMPUTE_TYPE,
    cpu_threads: int = 0,
) -> WhisperTeacher:
    """Resolve a teacher spec to local weights and return a lazily-loading :class:`WhisperTeacher`.

    ``spec``: ``bundled:tiny.en`` / ``bundled:base``; a CTranslate2 dir (has ``model.bin``); a
    ``save_pretrained`` dir; or a Hub id such as ``openai/whisper-tiny``. Every failure is a
    :class:`TeacherLoadError` naming the spec and the fix, raised here rather than mid-job.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    common = dict(device=device, dtype=dtype, compute_type=compute_type, cpu_threads=cpu_threads, cache_root=root)
    text = os.fspath(spec)
    if is_bundled_spec(text):
        name = BUNDLED_PREFIX + bundled_name(text)
        return _from_ct2(resolve_bundled(text, cache_root=root), name, root, common)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / CT2_MODEL_FILE).is_file():
            return _from_ct2(path, text, root, common)
        if (path / HF_CONFIG_FILE).is_file() and _weight_files(path):
            return _from_hf(path, text, _weights_digest(path, root)[:CACHE_KEY_HEX_CHARS], common)
        raise TeacherLoadError(
            f"{path} is neither a CTranslate2 model dir (model.bin + tokenizer.json) nor a transformers "
            f"save_pretrained dir (config.json + *.safetensors); point load_whisper at one of those, or use "
            f"a bundled teacher ({_bundled_list()})"
        )
    if path.exists():
        raise TeacherLoadError(f"{path} is a file; pass the directory that holds the model")
    if not HUB_ID_PATTERN.match(text):
        raise TeacherLoadError(
            f"teacher {text!r}: no such directory; give an existing model dir, a Hub id such as "
            f"'openai/whisper-tiny', or a bundled teacher ({_bundled_list()})"
        )
    return _from_hub(text, common)


def _bundled_list() -> str:
    return ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_TEACHERS)


def _from_ct2(ct2_dir: Path, name: str, root: Path, common: dict) -> WhisperTeacher:
    hf_dir = convert_ct2_to_transformers(ct2_dir, cache_root=root)
    digest = file_sha256(ct2_dir / CT2_MODEL_FILE, cache_root=root)
    return WhisperTeacher(
        name, f"ct2-sha256:{digest[:CACHE_KEY_HEX_CHARS]}", hf_dir=hf_dir, ct2_dir=ct2_dir,
        is_multilingual=_is_multilingual(hf_dir), **common,
    )


def _from_hf(hf_dir: Path, name: str, revision: str, common: dict) -> WhisperTeacher:
    config = read_json(hf_dir / HF_CONFIG_FILE)
    if config.get("model_type") != "whisper":
        raise TeacherLoadError(
            f"{name}: config.json says model_type={config.get('model_type')!r}, not 'whisper'; "
            "load_whisper takes Whisper models only"
        )
    if not (hf_dir / TOKENIZER_FILE).is_file() and not (hf_dir / "vocab.json").is_file():
        raise TeacherLoadError(
            f"{name}: {hf_dir} has no tokenizer; save the WhisperProcessor next to the model "
            "(processor.save_pretrained(dir))"
        )
    return WhisperTeacher(
        name, revision, hf_dir=hf_dir, ct2_dir=None, is_multilingual=_is_multilingual(hf_dir), **common
    )


def _from_hub(repo_id: str, common: dict) -> WhisperTeacher:
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except Exception as e:  # offline mode, missing repo, network: all mean "could not get it"
        raise TeacherLoadError(
            f"could not load Whisper teacher {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Without Hub access use a bundled teacher ({_bundled_list()}) or a local directory "
            "(a save_pretrained dir or a CTranslate2 model dir)."
        ) from e
    if not _weight_files(local):
        raise TeacherLoadError(f"Hub repo {repo_id!r} has no safetensors or PyTorch weights for Whisper")
    if local.parent.name == "snapshots":  # <hf cache>/models--org--name/snapshots/<commit>
        revision = local.name
    else:
        revision = _weights_digest(local, common["cache_root"])[:CACHE_KEY_HEX_CHARS]
    return _from_hf(local, repo_id, revision, common)


def _weight_files(hf_dir: Path) -> list[Path]:
    for pattern in HF_WEIGHT_GLOBS:
        files = sorted(hf_dir.glob(pattern))
        if files:
            return files
    return []


def _weights_digest(hf_dir: Path, root: Path) -> str:
    """One digest over all weight files (sharded checkpoints too); memoised per file."""
    joined = "".join(file_sha256(f, cache_root=root) for f in _weight_files(hf_dir))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def _is_multilingual(hf_dir: Path) -> bool:
    gen_path = hf_dir / "generation_config.json"
    if gen_path.is_file():
        flag = read_json(gen_path).get("is_multilingual")
        if flag is not None:
            return bool(flag)
    return int(read_json(hf_dir / HF_CONFIG_FILE).get("vocab_size", 0)) >= MULTILINGUAL_MIN_VOCAB


def _ensure_ct2_from_hf(hf_dir: Path, cache_root: Path | None) -> Path:
    """Convert an HF Whisper dir to CTranslate2 once, into ``<cache>/ct2/<weights digest>/``, keeping the
    stored precision."""
    root = cache_root if cache_root is not None else default_cache_dir()
    out = root / CT2_FROM_HF_SUBDIR / _weights_digest(hf_dir, root)[:CACHE_KEY_HEX_CHARS]
    if (out / CT2_CONVERSION_MARKER).is_file() and (out / CT2_MODEL_FILE).is_file():
        return out
    return convert_hf_to_ct2(hf_dir, out)


def convert_hf_to_ct2(hf_dir: Path, out: Path, quantization: str | None = None,
                      feature_extractor: dict | None = None) -> Path:
    """An HF Whisper dir as a CTranslate2 (faster-whisper) dir at `out`, via ctranslate2's own converter
    (offline from a local dir). Built in a temp dir and renamed, so a killed conversion never leaves a dir
    ctranslate2 would load. `feature_extractor` is written as preprocessor_config.json when the HF dir
    lacks one (transformers 5 keeps it in processor_config.json; faster-whisper reads the mel count there)."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as e:
        raise TeacherLoadError("converting to CTranslate2 needs: pip install 'speechkd[ct2]'") from e
    try:
        with atomic_directory(out) as tmp:  # removes the temp dir on any error, replaces `out` on success
            if not (hf_dir / TOKENIZER_FILE).is_file():
                raise TeacherLoadError(f"{hf_dir} has no tokenizer.json to ship with its CTranslate2 conversion; "
                                       f"save the WhisperProcessor beside the model")
            copy = [f for f in CT2_FILES_TO_COPY if (hf_dir / f).is_file()]
            converter = TransformersConverter(str(hf_dir), copy_files=copy)
            converter.convert(str(tmp), quantization=quantization, force=True)
            if feature_extractor is not None and not (tmp / "preprocessor_config.json").is_file():
                atomic_write_json(tmp / "preprocessor_config.json", feature_extractor)
            atomic_write_json(tmp / CT2_CONVERSION_MARKER,
                              {"source": str(hf_dir.resolve()), "quantization": quantization})
    except TeacherLoadError:
        raise
    except Exception as e:
        raise TeacherLoadError(f"could not convert {hf_dir} to CTranslate2 ({type(e).__name__}: {e})") from e
    return out
