"""CTC students of bundled base vs the teacher in its fastest runtime here (faster-whisper int8).

Usage:
    .venv/bin/python benchmarks/ctc_students.py             # full run (data shared with whisper_student.py)
    .venv/bin/python benchmarks/ctc_students.py --quick     # tiny settings, for tests (no BENCHMARKS.md)
    .venv/bin/python benchmarks/ctc_students.py --steps 1500 --max-test 100

Same training audio, label-free filtered base pseudo-labels and held-out tests as the Whisper-student
benchmark (benchmarks/student_data.py). Students, trained with `speechkd.train` (method ctc, character
vocabulary, SpecAugment):
  * whisper_encoder_ctc - the first 4 of base's 6 encoder layers + conv front end, real input length, CTC head;
  * conformer_ctc       - a ~6 M-parameter Conformer over 80-dim fbank, from scratch;
  * wav2vec2_ctc        - a small wav2vec2-style model over raw waveform, from scratch (only with --only).
Each CTC student is also decoded by prefix beam search with a word trigram built from the same
pseudo-label texts it was trained on (`speechkd lm`; no references), LM weight and word bonus chosen
on the synthetic dev set (`speechkd.evaluate.sweep_ctc_decoding`).
Timing: every model transcribes the same test utterances with 2 threads (CTC students: PyTorch fp32,
batch 8, search time included; teacher: faster-whisper int8 through CTranslate2, batch 8, greedy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, update_section  # noqa: E402
from student_data import prepare, reuse_clause, teacher as teacher_spec, train_students  # noqa: E402


def students(steps: int, quick: bool, teacher: str) -> dict[str, dict]:
    base = {"batch_size": 4 if quick else 16, "warmup_steps": 2 if quick else 100, "save_every": 200,
            "log_every": 25, "num_threads": 2, "max_steps": steps, "scheduler": "cosine"}
    return {
        "whisper_encoder_ctc": dict(student={"teacher": teacher, "num_layers": 4}, train={**base, "lr": 3e-4}),
        "conformer_ctc": dict(student={"d_model": 144, "num_layers": 8}, train={**base, "lr": 2e-3}),
        # Raw-waveform convolutions make each step ~2x dearer on CPU; half the steps keeps the budget.
        "wav2vec2_ctc": dict(student={}, train={**base, "lr": 1e-3, "max_steps": max(2, steps // 2)}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, not a measurement)")
    ap.add_argument("--work", type=Path, default=None, help="data/run folder (default exp/bench_students[_quick])")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per student")
    ap.add_argument("--max-test", type=int, default=None, help="utterances per held-out test set")
    # wav2vec2_ctc learns from raw waveform from scratch: minutes of CPU training leave it at ~100 % WER, so the
    # default run spends the budget on the two that can learn in that time; add it with --only.
    ap.add_argument("--only", default="whisper_encoder_ctc,conformer_ctc", help="comma-separated student types to run")
    args = ap.parse_args()
    steps = args.steps or (3 if args.quick else 800)
    max_test = args.max_test or (4 if args.quick else 60)

    import torch

    from speechkd.config import from_dict
    from speechkd.data import open_data
    from speechkd.evaluate import WhisperRecognizer, evaluate, sweep_ctc_decoding
    from speechkd.lm import DecodingLMConfig, build_decoding_lm
    from speechkd.students import student_recognizer
    from speechkd.teachers import load_whisper
    from speechkd.train import RunConfig
    from speechkd_runtime.beam import BeamSearchOptions

    torch.set_num_threads(2)
    t_all = time.perf_counter()
    data = prepare(args.quick, args.work)
    work = data["work"]
    teacher = teacher_spec(args.quick)
    plan = students(steps, args.quick, teacher)
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
    finals, train_s, reused = train_students({
        name: (from_dict(RunConfig, {"method": "ctc", "labels": str(data["kept"]), "teacher": teacher,
                                     "student_type": name, "student": spec["student"], "train": spec["train"]}),
               work / "ctc" / name)
        for name, spec in plan.items()})

    tests = {k: open_data(v, require_text=True)[:max_test] for k, v in data["tests"].items()}
    recognizers = {"teacher (faster-whisper int8)": WhisperRecognizer(
        load_whisper(teacher, cpu_threads=2, compute_type="int8"), backend="ctranslate2", batch_size=8)}
    recognizers.update({n: student_recognizer(d, batch_size=8) for n, d in finals.items()})
    # Label-free LM: the kept pseudo-labels' text (test sentences, if any, excluded), settings tuned on dev.
    lm_path = work / "lm" / "kept.3gram.arpa"
    lm_info = build_decoding_lm(DecodingLMConfig(text=str(data["kept"]), exclude=tuple(map(str, data["tests"].values()))),
                                lm_path)
    dev = open_data(data["dev"], require_text=True)[:max_test]
    grid = [BeamSearchOptions(lm_weight=a, word_score=b) for a in (0.2, 0.35, 0.5) for b in (1.0, 2.0, 3.0)]
    sweeps = {}
    for name, d in finals.items():
        sweeps[name] = sweep_ctc_decoding(student_recognizer(d, batch_size=8), dev, lm_path, grid[:1] if args.quick else grid)
        best = BeamSearchOptions(**{k: v for k, v in sweeps[name][0].items() if k != "wer"})
        recognizers[f"{name} + LM"] = student_recognizer(d, batch_size=8, lm=str(lm_path), beam=best)
        print(name, "dev sweep:", sweeps[name][:3], flush=True)
    rows = []
    for name, rec in recognizers.items():
        for test_name, utts in tests.items():
            r = evaluate(rec, utts, batch_size=8)
            rows.append({"model": name, "test": test_name, "wer": r["wer"], "seconds": r["processing_seconds"],
                         "audio_s": r["audio_seconds"], "rtf": r["rtf"], "params": r["num_parameters"],
                         "n": r["num_utterances"]})
            print(rows[-1], flush=True)
    result = {"data": {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items() if k != "tests"},
              "steps": steps, "train_seconds": train_s, "reused": reused, "lm": lm_info, "dev_n": len(dev),
              "sweeps": sweeps, "rows": rows, "total_seconds": round(time.perf_counter() - t_all, 1)}
    (work / "ctc_students.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2, default=str))
    if not args.quick:
        update_section("ctc_students", report(result, args))


def report(result: dict, args) -> str:
    rows, data = result["rows"], result["data"]
    tests = list(dict.fromkeys(r["test"] for r in rows))
    by = {(r["model"], r["test"]): r for r in rows}
    teacher = rows[0]["model"]
    t_secs = sum(by[(teacher, t)]["seconds"] for t in tests)
    audio = sum(by[(teacher, t)]["audio_s"] for t in tests)
    lines = [
        "### CTC students (teacher: bundled base)",
        "",
        provenance(),
        f"{result['total_seconds'] / 60:.0f} min in all (data shared with the Whisper-student benchmark"
        f"{reuse_clause(result.get('reused', []))}). "
        f"Trained on the {data['n_kept']} label-free-filtered pseudo-labels ({data['train_hours']} h before filtering), "
        f"{result['steps']} steps of 16 utterances each (wav2vec2_ctc: half); training time "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result["train_seconds"].items()) + ".",
        "",
        "| model | " + " | ".join(f"WER {t}" for t in tests) + " | RTF (2 threads) | speed vs teacher | params (M) |",
        "|---|" + "---|" * len(tests) + "---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        secs = sum(by[(model, t)]["seconds"] for t in tests)
        wers = " | ".join(f"{by[(model, t)]['wer']:.2f}" for t in tests)
        params = by[(model, tests[0])]["params"]
        lines.append(f"| {model} | {wers} | {secs / audio:.4f} | {t_secs / secs:.1f}× | "
                     f"{params / 1e6 if params else float('nan'):.1f} |")
    lines += ["", "Test utterances: " + ", ".join(f"{t} {by[(teacher, t)]['n']}" for t in tests)
              + ". WER in %, Whisper English normaliser on both sides; speed = teacher seconds / model seconds on "
              "the same utterances. Goal: >= 10x faster than the teacher at WER <= teacher + 3 on synthetic."]
    lm = result["lm"]
    lines += ["", f"\"+ LM\": CTC prefix beam search (speechkd_runtime.beam) with a word trigram from the {lm['sentences']} "
              f"kept pseudo-labels' text ({lm['words']} words, {lm['vocabulary']} distinct; built by `speechkd lm`, "
              f"{lm['excluded']} sentences equal to a test reference dropped). Settings chosen on "
              f"{result['dev_n']} synthetic dev utterances (dev WER, best first):", ""]
    lines += ["| student | beam | LM weight | word score | unk score | dev WER (best) | dev WER (worst of grid) |",
              "|---|---|---|---|---|---|---|"]
    for name, sweep in result["sweeps"].items():
        b = sweep[0]
        lines.append(f"| {name} | {b['beam_size']} | {b['lm_weight']} | {b['word_score']} | {b['unk_score']} | "
                     f"{b['wer']:.2f} | {sweep[-1]['wer']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
