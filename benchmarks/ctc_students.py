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
Each CTC student is also decoded by prefix beam search with a word trigram built from pseudo-label
text (`speechkd lm`; no references): which text (kept or all labels) and the search settings are
chosen on the synthetic dev set (`speechkd.evaluate.sweep_ctc_decoding`).
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
    # Label-free LMs: the pseudo-labels' text (all of it, or the kept part the students learned from; test
    # sentences, if any, excluded). Which text, and the search settings, are chosen on the dev set.
    lm_info, lm_paths = {}, {}
    for source in ("kept", "labels"):
        lm_paths[source] = work / "lm" / f"{source}.3gram.arpa"
        lm_info[source] = build_decoding_lm(DecodingLMConfig(text=str(data[source]),
                                                             exclude=tuple(map(str, data["tests"].values()))),
                                            lm_paths[source])
    dev = open_data(data["dev"], require_text=True)[:max_test]
    grid = [BeamSearchOptions(beam_size=b, lm_weight=a, word_score=w, unk_score=u)
            for b in (8, 16) for a in (0.2, 0.35, 0.5) for w in (1.0, 2.0) for u in (-6.0, -8.0)]
    sweeps = {}
    for name, d in finals.items():
        rec = student_recognizer(d, batch_size=8)
        sweeps[name] = sorted(({**row, "lm": source} for source, path in lm_paths.items()
                               for row in sweep_ctc_decoding(rec, dev, path, grid[:1] if args.quick else grid)),
                              key=lambda r: r["wer"])
        best = sweeps[name][0]
        options = BeamSearchOptions(**{k: v for k, v in best.items() if k not in ("wer", "lm")})
        recognizers[name] = rec
        recognizers[f"{name} + LM"] = student_recognizer(d, batch_size=8, lm=str(lm_paths[best["lm"]]), beam=options)
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
              "steps": steps, "train_seconds": train_s, "reused": reused, "lms": lm_info, "dev_n": len(dev),
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
    lms = result["lms"]
    text = {"kept": "the kept (filtered) pseudo-labels", "labels": "all pseudo-labels"}
    lines += ["", "\"+ LM\": CTC prefix beam search (speechkd_runtime.beam) with a word trigram (`speechkd lm`, Kneser-Ney) "
              "from pseudo-label text, no references: " + "; ".join(
                  f"`{k}`: {text[k]}, {v['sentences']} sentences, {v['words']} words, {v['vocabulary']} distinct"
                  for k, v in lms.items()) + f". Test sentences dropped from the LM text: "
              f"{max(v['excluded'] for v in lms.values())}. The LM text and the search settings are chosen by WER "
              f"on {result['dev_n']} synthetic dev utterances over a grid of {len(next(iter(result['sweeps'].values())))}"
              " (beam 8/16, LM weight 0.2/0.35/0.5, word score 1/2, unk score -6/-8, both LM texts); search time is "
              "inside the RTF.", "",
              "| student | LM text | beam | LM weight | word score | unk score | dev WER (chosen) | dev WER (worst in grid) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, sweep in result["sweeps"].items():
        b = sweep[0]
        lines.append(f"| {name} | {b['lm']} | {b['beam_size']} | {b['lm_weight']} | {b['word_score']} | "
                     f"{b['unk_score']} | {b['wer']:.2f} | {sweep[-1]['wer']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
