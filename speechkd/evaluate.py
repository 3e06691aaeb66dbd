"""Evaluate any recogniser on any data the same way: WER/CER, real-time factor, parameters, bytes.

Teachers and students (Whisper, CTC, ONNX exports) all reach this module as a `Recognizer`, so a
teacher-vs-student table is measured by one code path on the same audio in the same process.
Time is measured around the recogniser calls only (decoding audio files is excluded), after a
warm-up call, with the thread count recorded: that is what a real-time factor means.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

from speechkd.config import ConfigError, save_config
from speechkd.data import AudioConfig, SkipList, Utterance, iter_audio, open_data
from speechkd.io import atomic_write_json, write_jsonl
from speechkd.lm import BeamSearchFields
from speechkd.metrics import real_time_factor, score
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.beam import BeamSearchOptions
from speechkd_runtime.ctc import read_config
from speechkd_runtime.guards import WhisperGuards

log = logging.getLogger(__name__)

WARMUP_SECONDS = 1.0  # length of the silent clip used to warm a recogniser up before timing


class Recognizer(Protocol):
    name: str

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]: ...

    def num_parameters(self) -> int | None: ...

    def size_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class EvalConfig(BeamSearchFields):
    model: str = "bundled:tiny.en"  # a teacher spec, a saved student dir or a `speechkd export` dir
    data: str = ""  # audio with references: a JSONL manifest, an audio folder with a metadata file, an HF dataset
    backend: Literal["transformers", "ctranslate2", "auto"] = "auto"  # Whisper teachers; auto: ctranslate2 when the teacher has a CTranslate2 model
    batch_size: int = 8  # utterances per forward pass
    language: str | None = "en"  # Whisper language token, and the text normaliser's language
    max_utterances: int | None = None  # the first N utterances only; None: all
    num_threads: int | None = None  # None: leave torch/ct2 defaults
    compute_type: str = "default"  # ctranslate2 backend: default|int8|float32...
    variant: str | None = None  # ONNX export dirs: which graph (e.g. model.int8.onnx; Whisper: fp32|int8)
    warmup: bool = True  # decode one untimed clip of silence first, so the RTF leaves out one-off start-up costs
    # CTC models (BeamSearchFields): beam search with `lm`. Without it, decoding is greedy, or what an ONNX
    # export's config.json ships (`speechkd export --lm`).
    greedy: bool = False  # greedy CTC decoding even when the export ships an LM
    # Whisper models (teachers, students, ONNX exports): hallucination guards, on by default;
    # `guards: {enabled: false}` is raw greedy decoding.
    guards: WhisperGuards = field(default_factory=WhisperGuards)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lm and self.greedy:
            raise ValueError("lm and greedy contradict each other: drop --greedy to decode with the LM")
        if not self.data:
            raise ValueError("data is required: an audio folder, a JSONL manifest or a saved HF dataset")
        if self.lm:
            self.beam_options().validate()


class WhisperRecognizer:
    """A Whisper teacher (or Whisper student) behind the Recognizer protocol, on one backend."""

    def __init__(self, teacher, backend: str = "transformers", batch_size: int = 8, language: str | None = "en",
                 guards: WhisperGuards | None = None):
        self.teacher = teacher
        self.backend = backend
        self.batch_size = batch_size
        self.language = language
        self.guards = guards
        self.name = f"{teacher.name} [{backend}]"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        return self.teacher.transcribe(list(audios), backend=self.backend, batch_size=self.batch_size,
                                       language=self.language, guards=self.guards)

    def num_parameters(self) -> int | None:
        from speechkd.metrics import count_parameters

        return count_parameters(self.teacher.model)

    def size_bytes(self) -> int | None:
        from speechkd.metrics import bytes_on_disk

        if self.backend == "ctranslate2" and self.teacher.ct2_dir is not None:
            return bytes_on_disk(Path(self.teacher.ct2_dir) / "model.bin")
        if self.teacher.hf_dir is not None:
            return bytes_on_disk(sorted(Path(self.teacher.hf_dir).glob("*.safetensors")))
        return None


class RuntimeRecognizer:
    """An ONNX export run by the torch-free on-device runtime (`speechkd_runtime`), evaluated like any model.

    `variant` picks the graph: for CTC exports a file name such as "model.int8.onnx" (default: the export's
    default), for Whisper exports "fp32" or "int8".
    """

    def __init__(self, model_dir: str | os.PathLike, *, variant: str | None = None, num_threads: int | None = None,
                 guards: WhisperGuards | None = None, **ctc_decoding):
        """guards: Whisper exports' hallucination guards (default on); ctc_decoding: CtcModel's lm / beam / greedy
        (CTC exports only)."""
        import speechkd_runtime

        self.model_dir = Path(model_dir)
        config = read_config(self.model_dir)
        if config.get("model_type") == "whisper":
            from speechkd_runtime import whisper

            self.model = whisper.load(self.model_dir, variant=variant, num_threads=num_threads, guards=guards)
            files = self.model.config["files"][self.model.variant]
            self.files = [self.model_dir / f for f in (files.values() if isinstance(files, dict) else files)]
            label = self.model.variant
        else:
            self.model = speechkd_runtime.load_model(self.model_dir, model_file=variant, num_threads=num_threads,
                                                     **ctc_decoding)
            self.files = [self.model_dir / self.model.model_file]
            label = self.model.model_file
            if self.model.beam_search is not None:
                label += " + LM" if self.model.beam_search.lm is not None else " beam"
        self.config = config
        self.name = f"{self.model_dir.name} [onnxruntime {label}]"

    def transcribe(self, audios: Sequence[np.ndarray]) -> list[str]:
        return self.model.transcribe([np.asarray(a, dtype=np.float32) for a in audios], sample_rate=SAMPLE_RATE_HZ)

    def num_parameters(self) -> int | None:
        return self.config.get("num_parameters")

    def size_bytes(self) -> int | None:
        from speechkd.metrics import bytes_on_disk

        return bytes_on_disk(self.files)


def load_recognizer(spec: str, *, backend: str = "auto", batch_size: int = 8, language: str | None = "en",
                    compute_type: str = "default", num_threads: int | None = None,
                    variant: str | None = None, lm: str | None = None, beam: BeamSearchOptions | None = None,
                    greedy: bool = False, guards: WhisperGuards | None = None) -> Recognizer:
    """Resolve a model spec into a Recognizer: a saved student dir, an ONNX export dir (run by the on-device
    runtime; `variant` picks fp32/int8), or a Whisper teacher (bundled name, HF id/dir, CTranslate2 dir).

    CTC models decode greedily, or by beam search with the ARPA LM `lm` (settings `beam`); an ONNX export
    whose config.json ships an LM uses it unless `greedy` or another `lm` is given."""
    from speechkd.students import is_student_dir, read_student_file, student_recognizer
    from speechkd.teachers import load_whisper

    path = Path(spec)
    # Whisper students are save_pretrained dirs: they take the teacher path below, so both backends work.
    if is_student_dir(path) and read_student_file(path)[0] != "whisper":
        decoding = {"lm": lm, "beam": beam} if lm else {}
        return student_recognizer(path, batch_size=batch_size, **decoding)
    if path.is_dir() and any(path.glob("*.onnx")) and (path / "config.json").is_file():
        decoding = {"lm": lm, "beam": beam} if lm else {"greedy": greedy}
        if guards is not None and read_config(path).get("model_type") == "whisper":
            decoding["guards"] = guards
        return RuntimeRecognizer(path, variant=variant, num_threads=num_threads, **decoding)
    if lm:
        raise ConfigError(f"{spec}: --lm (CTC beam search) applies to CTC students and their ONNX exports only; "
                          f"drop it for Whisper models")

    teacher = load_whisper(spec, compute_type=compute_type, cpu_threads=num_threads or 0)
    if backend == "auto":
        backend = "ctranslate2" if teacher.ct2_dir is not None else "transformers"
    return WhisperRecognizer(teacher, backend=backend, batch_size=batch_size, language=language, guards=guards)


def evaluate(
    recognizer: Recognizer,
    utterances: Sequence[Utterance],
    *,
    batch_size: int = 8,
    language: str | None = "en",
    out_dir: str | os.PathLike | None = None,
    warmup: bool = True,
    audio_cfg: AudioConfig = AudioConfig(),
) -> dict:
    """Transcribe `utterances` (which must carry references) and score them. Writes results when out_dir is set."""
    out = Path(out_dir) if out_dir is not None else None
    skips = SkipList(out / "skipped.jsonl" if out else None, stage="eval")
    items = [(u, a) for u, a in iter_audio(utterances, audio_cfg, skips)]
    if not items:
        raise ValueError(f"nothing to evaluate: all {len(utterances)} utterances were skipped (see {skips.path})")
    # Sort by length so batches hold similar durations; report in input order.
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    if warmup:
        recognizer.transcribe([np.zeros(int(WARMUP_SECONDS * audio_cfg.sample_rate), dtype=np.float32)])
    hyps: dict[int, str] = {}
    from tqdm.auto import tqdm

    elapsed = 0.0
    with tqdm(total=len(items), desc=f"eval {recognizer.name}", unit="utt", disable=None) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            texts = recognizer.transcribe([items[i][1] for i in idx])
            elapsed += time.perf_counter() - t0
            hyps.update(zip(idx, texts))
            bar.update(len(idx))
    audio_seconds = sum(len(a) for _, a in items) / audio_cfg.sample_rate
    refs = [u.text or "" for u, _ in items]
    ids = [u.id for u, _ in items]
    result = score(refs, [hyps[i] for i in range(len(items))], ids=ids, language=language)
    import torch

    summary = {
        "model": recognizer.name,
        "num_utterances": len(items),
        "num_skipped": len(skips),
        "audio_seconds": round(audio_seconds, 2),
        "processing_seconds": round(elapsed, 3),
        "rtf": round(real_time_factor(elapsed, audio_seconds), 4),
        "num_parameters": recognizer.num_parameters(),
        "size_bytes": recognizer.size_bytes(),
        "torch_threads": torch.get_num_threads(),
        **result.summary(),
    }
    if out is not None:
        atomic_write_json(out / "results.json", summary)
        write_jsonl(out / "per_utterance.jsonl", [vars(u) for u in result.per_utterance])
    return summary


def sweep_ctc_decoding(recognizer, utterances: Sequence[Utterance], lm: str | os.PathLike,
                       grid: Sequence[BeamSearchOptions], *, language: str | None = "en",
                       audio_cfg: AudioConfig = AudioConfig()) -> list[dict]:
    """WER of LM beam search for each option set in `grid` on `utterances` (a dev set with references).

    The CTC student (a CTCRecognizer) runs once; only the search is repeated — icefall's and pyctcdecode's
    recipe for choosing LM weight and word bonus. Returns rows (settings + wer), best first.
    """
    from speechkd_runtime.beam import CtcBeamSearch
    from speechkd_runtime.ngram import NgramLM

    items = list(iter_audio(utterances, audio_cfg, SkipList(None, stage="sweep")))
    refs = [u.text or "" for u, _ in items]
    log_probs = recognizer.log_probs([a for _, a in items])
    vocab, ngram = recognizer.model.vocab, NgramLM(lm)
    rows = []
    for options in grid:
        search = CtcBeamSearch(vocab.tokens, vocab.blank_id, ngram, options)
        hyps = [search.decode(lp) for lp in log_probs]
        rows.append({**dataclasses.asdict(options), "wer": score(refs, hyps, language=language).wer})
    return sorted(rows, key=lambda r: r["wer"])


def run_eval(cfg: EvalConfig, out_dir: str | os.PathLike | None = None) -> dict:
    """The `speechkd eval` job: load model and data, evaluate, save config + results beside each other."""
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    utts = open_data(cfg.data, require_text=True)
    if cfg.max_utterances:
        utts = utts[: cfg.max_utterances]
    rec = load_recognizer(cfg.model, backend=cfg.backend, batch_size=cfg.batch_size, language=cfg.language,
                          compute_type=cfg.compute_type, num_threads=cfg.num_threads, variant=cfg.variant,
                          lm=cfg.lm, beam=cfg.beam_options() if cfg.lm else None, greedy=cfg.greedy,
                          guards=cfg.guards)
    if out_dir is not None:
        save_config(cfg, Path(out_dir) / "config.yaml")
    return evaluate(rec, utts, batch_size=cfg.batch_size, language=cfg.language, out_dir=out_dir, warmup=cfg.warmup)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] | None = None) -> str:
    """A Markdown table of result dicts: columns are (key, header, format)."""
    columns = columns or [
        ("model", "model", "{}"),
        ("wer", "WER %", "{:.2f}"),
        ("cer", "CER %", "{:.2f}"),
        ("rtf", "RTF", "{:.4f}"),
        ("num_parameters", "params (M)", "{:.1f}"),
        ("size_bytes", "MB", "{:.1f}"),
        ("num_utterances", "utts", "{}"),
    ]
    scale = {"num_parameters": 1e-6, "size_bytes": 1 / 2**20}

    def cell(row, key, fmt):
        v = row.get(key)
        if v is None:
            return "—"
        return fmt.format(v * scale.get(key, 1)) if isinstance(v, (int, float)) else str(v)

    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
