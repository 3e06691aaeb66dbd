"""Training and test data shared by the student benchmarks (whisper_student.py, ctc_students.py).

Usage (normally imported; run directly to build the data ahead of time):
    .venv/bin/python benchmarks/student_data.py [--quick]

Unlabelled training audio: a synthetic corpus (>= 2 h, 35 voices) plus 80 % of each real set in
../shared/data/real, chosen by a hash of the utterance id. Their references are ignored for training
(the label records keep them under `reference` only so that label quality can be reported). Held-out
tests: the synthetic test split (unseen sentences) and the other 20 % of each real set.
Labels: bundled base (CTranslate2 int8, packed) -> label-free filter (rank average of the label-free
scorers, keep the best 80 %). Everything is cached under exp/bench_students[_quick]/ and resumable.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, real_sets  # noqa: E402

TEACHER = "bundled:base"
QUICK_TEACHER = "bundled:tiny.en"  # --quick is a smoke test (run by the test suite): smallest teacher, no ../shared
TEST_SHARE = 0.2
KEEP_FRACTION = 0.8


def teacher(quick: bool) -> str:
    return QUICK_TEACHER if quick else TEACHER


def held_out(uid: str) -> bool:
    return int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < TEST_SHARE


def training_seconds(run_dir: Path) -> float:
    """Wall time of the training loop as logged by it (a rerun that finds the student trained takes ~0 s)."""
    from speechkd.io import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "elapsed_s" in r]
    return rows[-1]["elapsed_s"] if rows else 0.0


def train_students(runs: dict) -> tuple[dict[str, Path], dict[str, float], list[str]]:
    """Train each (RunConfig, run_dir) of `runs` by name: final dirs, training seconds, and the names reused.

    A run dir that already holds a final student of the same config was trained by an earlier run; train()
    checks the config and returns at once, and the student is reported as reused.
    """
    from speechkd.train import train

    finals, seconds, reused = {}, {}, []
    for name, (run, run_dir) in runs.items():
        if (run_dir / "final").is_dir():
            reused.append(name)
        finals[name] = train(run, run_dir)
        seconds[name] = training_seconds(run_dir)
    return finals, seconds, reused


def reuse_clause(reused: list[str]) -> str:
    """Words for a report's time total when some students were trained by an earlier run and only reused."""
    if not reused:
        return ""
    return (f"; {', '.join(reused)} trained by an earlier run of the same config and reused, "
            "its training time not in that total")


def prepare(quick: bool = False, work: Path | None = None) -> dict:
    from speechkd.data import open_data
    from speechkd.filters import FilterConfig, run_filter
    from speechkd.io import read_jsonl, write_jsonl
    from speechkd.label import LabelConfig, run_label
    from speechkd.synth import SynthConfig, synthesize_corpus

    work = work or ROOT / "exp" / ("bench_students_quick" if quick else "bench_students")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = synthesize_corpus(work / "corpus", SynthConfig(num_utterances=40 if quick else 1800, seed=11))
    tests = {"synthetic": corpus / "test.jsonl"}
    # `text` becomes the label record's `reference`: used to report label quality, never to train.
    synth_train = open_data(corpus / "train.jsonl", require_text=True)
    train_rows = [{"id": u.id, "audio": u.audio, "duration": u.duration, "text": u.text} for u in synth_train]
    for name, manifest in ({} if quick else real_sets()).items():
        utts = open_data(manifest, require_text=True)
        if quick:
            utts = utts[:30]
        test = [u for u in utts if held_out(u.id)]
        write_jsonl(work / f"{name}_test.jsonl", [{"id": u.id, "audio": u.audio, "text": u.text, "duration": u.duration}
                                                  for u in test])
        tests[name] = work / f"{name}_test.jsonl"
        train_rows += [{"id": u.id, "audio": u.audio, "duration": u.duration, "text": u.text}
                       for u in utts if not held_out(u.id)]
    manifest = work / "train_audio.jsonl"
    write_jsonl(manifest, train_rows)
    synth_hours = sum(u.duration or 0 for u in synth_train) / 3600
    labels = work / "labels" / "base.jsonl"
    run_label(LabelConfig(teacher=teacher(quick), backend="ctranslate2", compute_type="int8", batch_size=8), manifest, labels)
    kept = work / "labels" / "base.kept.jsonl"
    run_filter(FilterConfig(select="fraction", keep_fraction=KEEP_FRACTION), labels, kept)
    records = list(read_jsonl(labels))
    return {
        "work": work, "labels": labels, "kept": kept, "tests": tests, "dev": corpus / "dev.jsonl",
        "synth_train_hours": round(synth_hours, 2),
        "train_hours": round(sum(r["duration"] for r in records) / 3600, 2),
        "n_train": len(records), "n_kept": sum(1 for _ in read_jsonl(kept)),
        "prepare_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    print(prepare(ap.parse_args().quick))
