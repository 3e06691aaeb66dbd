"""Teacher-target store: extraction speed and size, and training from the store against running the teacher online.

Usage:
    .venv/bin/python benchmarks/targets.py                  # bundled base encoder, layers 3 and 6, 64 LJ clips
    .venv/bin/python benchmarks/targets.py --n 16 --steps 6 --no-write   # quick look, BENCHMARKS.md alone

1. `speechkd targets` (extract_targets) with the bundled base Whisper encoder, two layers (3 and 6 of 6), fp16,
   2 threads, on the first N clips of ljspeech_385 (../shared): audio seconds per wall second, bytes stored per
   audio second. Whisper's encoder always runs on 30 s of input, so the cost per clip is the same for any clip
   length up to 30 s; the speed in audio seconds per second grows with the clips' length.
2. The same layer-wise training run twice, same student (conformer_ctc, d 144, 6 layers), data, batch (8) and
   steps: targets read from that store, or computed by the teacher in every batch (`method_config.targets` unset).
   Reported: seconds per optimizer step after the first (the first includes start-up), and the ratio.
Writes the `targets` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, real_sets, update_section  # noqa: E402

TEACHER = "bundled:base"
LAYERS = (3, 6)
THREADS = 2
STUDENT = {"d_model": 144, "num_layers": 6, "num_heads": 4, "ffn_dim": 576}


def step_seconds(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "elapsed_s" in r]
    first, last = rows[0], rows[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["step"] - first["step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="ljspeech_385 clips")
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps of each training run")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = ap.parse_args()

    import torch

    from speechkd.data import open_data
    from speechkd.io import write_jsonl
    from speechkd.targets import TargetsConfig, extract_targets, load_target_teacher
    from speechkd.train import RunConfig, TrainConfig, train

    torch.set_num_threads(THREADS)
    utts = open_data(real_sets()["ljspeech_385"])[: args.n]
    with tempfile.TemporaryDirectory(prefix="speechkd-bench-targets-") as tmp:
        tmp = Path(tmp)
        manifest = tmp / "clips.jsonl"
        write_jsonl(manifest, [{"id": u.id, "audio": u.audio} for u in utts])
        teacher = load_target_teacher(TEACHER)
        t0 = time.perf_counter()
        summary = extract_targets(TargetsConfig(teacher=TEACHER, layers=LAYERS), str(manifest), tmp / "store",
                                  teacher=teacher, progress=False)
        wall = time.perf_counter() - t0
        del teacher
        runs = {}
        for name, targets in (("from the store", str(tmp / "store")), ("teacher online", "")):
            run = RunConfig(method="layerwise", labels=str(manifest), teacher=TEACHER, student_type="conformer_ctc",
                            student=STUDENT, method_config={"targets": targets, "teacher_layers": list(LAYERS)},
                            train=TrainConfig(max_steps=args.steps, batch_size=8, log_every=1, save_every=0,
                                              warmup_steps=2, num_threads=THREADS))
            out = tmp / name.replace(" ", "_")
            train(run, out, progress=False)
            runs[name] = step_seconds(out)

    audio_s = summary["audio_seconds"]
    lines = [
        "## Teacher-target store",
        "",
        f"`speechkd targets`: {TEACHER}'s encoder, layers {list(LAYERS)}, float16, {THREADS} threads, "
        f"{summary['stored_this_run']} ljspeech_385 clips ({audio_s:.0f} s of audio). The encoder runs on 30 s of "
        f"input per clip, whatever its length.",
        "",
        "| what | value |",
        "|---|---|",
        f"| extraction speed | {audio_s / wall:.1f} audio s per s ({wall / summary['stored_this_run']:.2f} s per clip) |",
        f"| stored | {summary['bytes_on_disk'] / audio_s / 1024:.0f} KiB per audio second "
        f"({summary['bytes_on_disk'] / 2**20:.1f} MiB in all) |",
        "",
        f"Layer-wise training (conformer_ctc d 144 x 6 layers, heads onto teacher layers {list(LAYERS)}, batch 8, "
        f"{args.steps} steps, {THREADS} threads), seconds per optimizer step after the first:",
        "",
        "| targets | s / step | vs online |",
        "|---|---|---|",
    ]
    online = runs["teacher online"]
    for name, sec in runs.items():
        lines.append(f"| {name} | {sec:.2f} | {online / sec:.1f}x faster |" if name != "teacher online"
                     else f"| {name} | {sec:.2f} | 1.0x |")
    gpu = (f"GPU: {torch.cuda.get_device_name(0)} present, but this benchmark measures the CPU path only"
           if torch.cuda.is_available() else
           "GPU: none on this machine, so the CUDA path of training and extraction (train.device, precision) has "
           "not been measured; it is written and unit-tested on CPU only")
    lines += ["", gpu, "", provenance()]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("targets", body)


if __name__ == "__main__":
    main()
