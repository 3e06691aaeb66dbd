"""Exported students: file size, speed and WER of PyTorch fp32 vs ONNX fp32 vs ONNX int8 (on-device runtime).

Usage:
    .venv/bin/python benchmarks/export.py                 # after ctc_students.py and whisper_student.py
    .venv/bin/python benchmarks/export.py --max-test 100

Takes the students trained by benchmarks/ctc_students.py and benchmarks/whisper_student.py (it does not
train), exports each with `speechkd.onnx_export` (CTC: fp32, dynamic int8 and static QDQ int8 calibrated on the
synthetic dev split; Whisper: encoder + decoder with KV cache, fp32 and per-row dynamic int8), and evaluates every
variant on the same held-out test utterances with 2 threads: PyTorch through the student's recogniser,
ONNX through the torch-free runtime `speechkd_runtime` (what ships to a device). CTC students are also
run with the word-trigram beam search benchmarks/ctc_students.py built and tuned (PyTorch fp32 + LM vs
ONNX int8 + LM), when its results are there. The teacher (bundled base) goes through the same Whisper
export as a reference row: what int8 costs a well-trained Whisper model rather than a short-trained student.
Goal: int8 >= 3.5x smaller than fp32, >= 1.5x faster than PyTorch fp32, WER within +0.5 of PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, provenance, update_section  # noqa: E402

WORK = ROOT / "exp" / "bench_students"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-test", type=int, default=40, help="utterances per held-out test set")
    args = ap.parse_args()

    import torch

    from speechkd.data import open_data
    from speechkd.evaluate import RuntimeRecognizer, WhisperRecognizer, evaluate
    from speechkd.onnx_export import ExportConfig, export_student
    from speechkd.onnx_export.whisper_onnx import export_whisper
    from speechkd.metrics import bytes_on_disk
    from speechkd.students import student_recognizer
    from speechkd.teachers import load_whisper
    from speechkd_runtime.beam import BeamSearchOptions

    torch.set_num_threads(2)
    t_all = time.perf_counter()
    students = {p.parent.name: p for p in sorted((WORK / "ctc").glob("*/final"))}
    for run in ("dec2_filtered", "tiny.en_filtered"):  # the teacher-cut student and the smaller-pretrained one
        if (WORK / "whisper" / run / "final").is_dir():
            students[f"whisper {run.replace('_', ' ')}"] = WORK / "whisper" / run / "final"
    if not students:
        raise SystemExit(f"no trained students under {WORK}; run benchmarks/ctc_students.py and whisper_student.py")
    students["whisper base (teacher, reference)"] = "bundled:base"
    tests = {p.name.removesuffix("_test.jsonl"): p for p in sorted(WORK.glob("*_test.jsonl"))}
    tests = {"synthetic": WORK / "corpus" / "test.jsonl", **tests}
    utts = {k: open_data(v, require_text=True)[: args.max_test] for k, v in tests.items()}
    calibration = str(WORK / "corpus" / "dev.jsonl")
    lm_setup = {}  # CTC student -> (ARPA, tuned beam options), from benchmarks/ctc_students.py
    ctc_result = WORK / "ctc_students.json"
    if ctc_result.is_file():
        res = json.loads(ctc_result.read_text())
        for name, sweep in res.get("sweeps", {}).items():
            best = sweep[0]
            lm_setup[name] = (res["lms"][best["lm"]]["arpa"],
                              BeamSearchOptions(**{k: v for k, v in best.items() if k not in ("wer", "lm")}))
    rows = []
    for name, student_dir in students.items():
        out = WORK / "onnx" / name.split(" (")[0].replace(" ", "_")
        is_whisper = name.startswith("whisper ")
        if is_whisper:
            export_whisper(student_dir, out, quantize=("dynamic",))
        else:
            export_student(student_dir, out, ExportConfig(quantize=("dynamic", "static"), calibration=calibration,
                                                          num_threads=2))
        config = json.loads((out / "config.json").read_text())
        if is_whisper:
            model = load_whisper(student_dir)  # its hf_dir holds the weights (the teacher's live in the cache)
            torch_bytes = bytes_on_disk(sorted(Path(model.hf_dir).glob("*.safetensors")))
            variants = {"PyTorch fp32": WhisperRecognizer(model, backend="transformers")}
            variants.update({f"ONNX {v}": RuntimeRecognizer(out, variant=v, num_threads=2) for v in config["files"]})
        else:
            torch_bytes = bytes_on_disk(sorted(student_dir.glob("*.safetensors")))
            variants = {"PyTorch fp32": student_recognizer(student_dir, batch_size=8)}
            variants.update({f"ONNX {k}": RuntimeRecognizer(out, variant=f, num_threads=2)
                             for k, f in config["onnx"].items()})
            if name in lm_setup:
                arpa, beam = lm_setup[name]
                variants["PyTorch fp32 + LM"] = student_recognizer(student_dir, batch_size=8, lm=arpa, beam=beam)
                variants["ONNX int8-dynamic + LM"] = RuntimeRecognizer(out, variant=config["onnx"]["int8-dynamic"],
                                                                       num_threads=2, lm=arpa, beam=beam)
        for label, rec in variants.items():
            size = rec.size_bytes() if label.startswith("ONNX") else torch_bytes
            for test_name, items in utts.items():
                r = evaluate(rec, items, batch_size=8)
                rows.append({"student": name, "variant": label, "test": test_name, "wer": r["wer"],
                             "seconds": r["processing_seconds"], "audio_s": r["audio_seconds"], "bytes": size})
                print(rows[-1], flush=True)
    result = {"rows": rows, "max_test": args.max_test, "total_seconds": round(time.perf_counter() - t_all, 1)}
    (WORK / "export.json").write_text(json.dumps(result, indent=2))
    update_section("export", report(result))


def report(result: dict) -> str:
    rows = result["rows"]
    tests = list(dict.fromkeys(r["test"] for r in rows))
    lines = [
        "### Export: PyTorch vs ONNX fp32 vs int8 (torch-free runtime)",
        "",
        provenance(),
        f"{result['total_seconds'] / 60:.0f} min, after the two student benchmarks; up to {result['max_test']} utterances per test set, 2 threads.",
        "",
        "| student | variant | MB | size vs fp32 | speed vs PyTorch | " + " | ".join(f"WER {t}" for t in tests) + " |",
        "|---|---|---|---|---|" + "---|" * len(tests),
    ]
    for student in dict.fromkeys(r["student"] for r in rows):
        mine = [r for r in rows if r["student"] == student]
        secs = {v: sum(r["seconds"] for r in mine if r["variant"] == v) for v in dict.fromkeys(r["variant"] for r in mine)}
        size = {r["variant"]: r["bytes"] for r in mine}
        fp32 = next((v for v in size if v.startswith("ONNX") and ("fp32" in v)), None)
        for v in secs:
            wers = " | ".join(f"{r['wer']:.2f}" for r in mine if r["variant"] == v)
            ratio = f"{size[fp32] / size[v]:.2f}×" if fp32 and size[v] else "—"
            base = "PyTorch fp32 + LM" if v.endswith("+ LM") else "PyTorch fp32"
            lines.append(f"| {student} | {v} | {size[v] / 2**20:.1f} | {ratio} | {secs[base] / secs[v]:.2f}× | {wers} |")
    lines += ["", "Size vs fp32 compares with the ONNX fp32 file (the LM file is not counted); speed = PyTorch fp32 "
              "seconds / variant seconds on the same utterances, \"+ LM\" rows against PyTorch fp32 + LM (search "
              "time included). Every variant gets 8 utterances at a time. CTC dynamic-int8 graphs run one utterance "
              "per call: their per-tensor activation scales would otherwise depend on the batch mates and their "
              "padding; PyTorch, the other ONNX variants and Whisper int8 (per-row activation scales) run batches "
              "of 8. The runtime keeps 2 CTC calls in flight (a batch of 8 becomes two of 4), each computing its "
              "own features; Whisper exports run one call at a time. The Whisper teacher row is a "
              "reference, not a student. \"+ LM\": "
              "the trigram and settings of the CTC-student "
              "benchmark."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
