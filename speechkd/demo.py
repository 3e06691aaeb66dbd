"""`make demo`: the pipeline on the embedded default data, offline.

Today it synthesises a small many-speaker corpus, pseudo-labels its train split with the bundled
teacher (packed, resumable labelling), transcribes its test split on both backends, and prints WER,
throughput and real-time factor. Later stages (filtering, distillation, export) join here as they land.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from speechkd.config import save_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    teacher: str = "bundled:tiny.en"
    num_utterances: int = 120
    seed: int = 0
    backends: tuple[str, ...] = ("ctranslate2", "transformers")
    batch_size: int = 8

    def validate(self) -> None:
        if self.num_utterances < 10:
            raise ValueError("num_utterances must be >= 10 so that every split gets utterances")


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike = "exp/demo") -> list[dict]:
    from speechkd.data import open_data
    from speechkd.evaluate import WhisperRecognizer, evaluate, format_table
    from speechkd.io import read_jsonl
    from speechkd.label import LabelConfig, run_label
    from speechkd.metrics import score
    from speechkd.runlog import setup_logging
    from speechkd.synth import SynthConfig, synthesize_corpus
    from speechkd.teachers import load_whisper

    out = Path(out_dir)
    setup_logging(out, "demo")
    save_config(cfg, out / "config.yaml")
    log.info("stage 1/3: synthesising %d utterances", cfg.num_utterances)
    corpus = synthesize_corpus(out / "corpus", SynthConfig(num_utterances=cfg.num_utterances, seed=cfg.seed))
    log.info("stage 2/3: pseudo-labelling the train split with %s", cfg.teacher)
    labels = out / "labels" / "train.jsonl"
    summary = run_label(LabelConfig(teacher=cfg.teacher, batch_size=cfg.batch_size), corpus / "train.jsonl", labels)
    recs = list(read_jsonl(labels))
    label_wer = score([r["reference"] for r in recs], [r["text"] for r in recs]).wer
    test = open_data(corpus / "test.jsonl", require_text=True)
    log.info("stage 3/3: evaluating %s on %d test utterances", cfg.teacher, len(test))
    teacher = load_whisper(cfg.teacher)
    rows = []
    for backend in cfg.backends:
        rec = WhisperRecognizer(teacher, backend=backend, batch_size=cfg.batch_size)
        rows.append(evaluate(rec, test, batch_size=cfg.batch_size, out_dir=out / "eval" / backend))
    minutes = sum(r["duration"] for r in recs) / 60
    speed = (f"labelled at {summary['audio_seconds_per_second']} audio-s/s" if summary["labelled_this_run"]
             else "all reused from the previous run")
    print(f"\npseudo-labels: {len(recs)} utterances, {minutes:.1f} min of audio, {speed}; label WER vs the synthetic "
          f"references {label_wer:.2f}% ({labels})")
    print("\n" + format_table(rows) + "\n")
    print(f"outputs in {out}/ (per-utterance errors: {out}/eval/<backend>/per_utterance.jsonl)")
    return rows
