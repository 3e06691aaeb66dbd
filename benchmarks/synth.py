"""Synthetic-corpus speed: how much faster than real time speechkd.synth writes a default corpus.

Usage:
    .venv/bin/python benchmarks/synth.py                   # 200 utterances, in-process and with 2 workers
    .venv/bin/python benchmarks/synth.py --n 500 --workers 2,4
    .venv/bin/python benchmarks/synth.py --no-write        # print only, leave BENCHMARKS.md alone

Each run synthesises a fresh corpus (default 35 speakers, default sentence list) into a temporary folder
and times the whole `synthesize_corpus` call, so process start-up, resampling, noise, wav encoding and
atomic writes are all included. Writes the `synth` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, update_section  # noqa: E402

MIN_SPEEDUP = 50.0  # the target: x real time on a 2-core machine


def run_once(n: int, workers: int, seed: int) -> dict:
    from speechkd.synth import SynthConfig, synthesize_corpus

    with tempfile.TemporaryDirectory(prefix="speechkd-bench-synth-") as tmp:
        cfg = SynthConfig(num_utterances=n, seed=seed, num_workers=workers)
        t0 = time.perf_counter()
        out = synthesize_corpus(Path(tmp) / "corpus", cfg, progress=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    audio = sum(r["duration"] for r in rows)
    return {"workers": workers, "utterances": len(rows), "audio_s": audio, "wall_s": wall, "speedup": audio / wall,
            "styles": Counter(r["style"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="utterances per run")
    ap.add_argument("--workers", default="0,2", help="comma-separated num_workers values (0 = in-process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()

    from speechkd.synth import DEFAULT_VOICES, espeak_version

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = [run_once(args.n, int(w), args.seed) for w in args.workers.split(",") if w.strip()]
    lines = [
        "## Synthetic corpus (espeak-ng)",
        "",
        f"`synthesize_corpus` with the default {len(DEFAULT_VOICES)} speakers, {args.n} utterances, 16 kHz; "
        "wall time of the whole call (worker start-up, synthesis, resampling, noise, wav writes). "
        f"espeak-ng: {espeak_version()}. "
        f"Target: >= {MIN_SPEEDUP:.0f}x real time on 2 cores.",
        "",
        "| workers | utterances | audio (s) | wall (s) | x real time |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        label = "in-process" if r["workers"] <= 1 else str(r["workers"])
        lines.append(f"| {label} | {r['utterances']} | {r['audio_s']:.1f} | {r['wall_s']:.2f} | {r['speedup']:.0f} |")
    styles = results[-1]["styles"]
    lines += ["", "Utterances per speaker style: " + ", ".join(f"{k} {v}" for k, v in styles.most_common()) + ".",
              f"1-minute load average before the runs: {load_before:.1f} (other work on the machine slows these "
              "numbers down; they are not corrected for it).", "", provenance()]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("synth", body)


if __name__ == "__main__":
    main()
