"""Labelling throughput and label WER: speechkd vs faster-whisper and vs the transformers pipeline.

Usage:
    .venv/bin/python benchmarks/label.py                          # tiny.en, 150 short utts + 3 long files
    .venv/bin/python benchmarks/label.py --teacher bundled:base --n-short 90 --n-long 2
    .venv/bin/python benchmarks/label.py --skip-transformers      # CTranslate2 comparison only

Same files, same model, same machine, one process, side by side:
  * speechkd `ctranslate2` backend (batched, length-sorted, packed windows) vs faster-whisper
    `WhisperModel.transcribe` called per file (same compute type, beam 1, greedy, language en, no VAD,
    no temperature fallback; no timestamps on short files, its default timestamps on long files, which
    its long-form algorithm needs);
  * speechkd `transformers` backend vs `transformers.pipeline("automatic-speech-recognition")`
    with default settings, called per file.
Short set: 2-10 s utterances (synthetic test split + ../shared/data/real). Long set: files of 60-90 s
made by joining consecutive real utterances. Label WER is measured against the references
(Whisper English normaliser both sides). Writes the `label` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, provenance, real_sets, update_section  # noqa: E402

SR = 16_000


def build_sets(work: Path, n_short: int, n_long: int) -> tuple[list, list]:
    from speechkd.data import decode, open_data
    from speechkd.synth import SynthConfig, synthesize_corpus

    corpus = synthesize_corpus(work / "corpus", SynthConfig(num_utterances=max(200, n_short), seed=1))
    pool = [u for u in open_data(corpus / "metadata.jsonl" if (corpus / "metadata.jsonl").exists() else corpus)]
    real = {name: open_data(m, require_text=True) for name, m in real_sets().items()}
    short = []
    per = n_short // 3
    for utts in [pool, real["cmu_arctic_cathy"], real["ljspeech_385"]]:
        picked = [u for u in utts if u.duration and 2.0 <= u.duration <= 10.0][:per]
        short += picked
    long_dir = work / "long"
    long_dir.mkdir(parents=True, exist_ok=True)
    long_items = []
    lj = real["ljspeech_385"][200:]
    k = 0
    for f in range(n_long):
        target = 60 + 15 * f
        parts, texts, total = [], [], 0.0
        while total < target and k < len(lj):
            a = decode(lj[k])
            parts += [a, np.zeros(int(0.4 * SR), np.float32)]
            texts.append(lj[k].text)
            total += len(a) / SR + 0.4
            k += 1
        path = long_dir / f"long{f}.wav"
        sf.write(path, np.concatenate(parts), SR)
        long_items.append({"audio": str(path), "text": " ".join(texts), "id": f"long{f}"})
    with open(long_dir / "manifest.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in long_items)
    return short, open_data(long_dir / "manifest.jsonl", require_text=True)


def wer_of(utts, hyps) -> float:
    from speechkd.metrics import score

    return score([u.text for u in utts], [hyps[u.id] for u in utts]).wer


def run_ours(utts, teacher_spec, backend, compute_type, threads, batch_size, pack=True) -> tuple[dict, float]:
    from speechkd.label import LabelConfig, pseudo_label
    from speechkd.teachers import load_whisper

    teacher = load_whisper(teacher_spec, compute_type=compute_type, cpu_threads=threads)
    cfg = LabelConfig(teacher=teacher_spec, backend=backend, compute_type=compute_type, batch_size=batch_size, pack=pack)
    list(pseudo_label(utts[:2], teacher, cfg, progress=False))  # warm-up: load weights, first-call costs
    t0 = time.perf_counter()
    hyps = {r["id"]: r["text"] for r in pseudo_label(utts, teacher, cfg, progress=False)}
    return hyps, time.perf_counter() - t0


def run_faster_whisper(utts, ct2_dir, compute_type, threads) -> tuple[dict, float]:
    from faster_whisper import WhisperModel

    from speechkd.data import decode

    model = WhisperModel(str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=threads)
    audio = {u.id: decode(u) for u in utts}
    opts = dict(beam_size=1, language="en", without_timestamps=True, temperature=0.0, vad_filter=False)
    list(model.transcribe(audio[utts[0].id], **opts)[0])  # warm-up
    t0 = time.perf_counter()
    hyps = {}
    for u in utts:
        # Beyond 30 s faster-whisper's sequential algorithm seeks by timestamps: give it its default there.
        long_file = len(audio[u.id]) > 30 * SR
        segments, _ = model.transcribe(audio[u.id], **{**opts, "without_timestamps": not long_file})
        hyps[u.id] = " ".join(s.text.strip() for s in segments)
    return hyps, time.perf_counter() - t0


def run_pipeline(utts, hf_dir) -> tuple[dict, float]:
    from transformers import pipeline

    from speechkd.data import decode

    asr = pipeline("automatic-speech-recognition", model=str(hf_dir), device="cpu")
    audio = {u.id: decode(u) for u in utts}
    asr({"raw": audio[utts[0].id], "sampling_rate": SR})  # warm-up
    t0 = time.perf_counter()
    hyps = {}
    for u in utts:
        # Default settings; long files need chunking or return_timestamps, which the pipeline asks for.
        kwargs = {"return_timestamps": True} if len(audio[u.id]) > 30 * SR else {}
        hyps[u.id] = asr({"raw": audio[u.id], "sampling_rate": SR}, **kwargs)["text"]
    return hyps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="bundled:tiny.en")
    ap.add_argument("--n-short", type=int, default=150)
    ap.add_argument("--n-long", type=int, default=3)
    ap.add_argument("--compute-type", default="int8", help="CTranslate2 compute type, both sides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / "exp" / "bench_label")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from speechkd.teachers import load_whisper

    teacher = load_whisper(args.teacher)
    short, long_ = build_sets(args.work, args.n_short, args.n_long)
    rows = []
    for set_name, utts in [("short (2-10 s)", short), ("long (60-90 s)", long_)]:
        audio_s = sum(u.duration for u in utts)
        pairs = [("speechkd ctranslate2", lambda: run_ours(utts, args.teacher, "ctranslate2", args.compute_type, args.threads, args.batch_size)),
                 ("speechkd ctranslate2, no packing", lambda: run_ours(utts, args.teacher, "ctranslate2", args.compute_type, args.threads, args.batch_size, pack=False)),
                 ("faster-whisper per file", lambda: run_faster_whisper(utts, teacher.ct2_dir, args.compute_type, args.threads))]
        if not args.skip_transformers:
            pairs += [("speechkd transformers", lambda: run_ours(utts, args.teacher, "transformers", "default", args.threads, args.batch_size)),
                      ("transformers pipeline", lambda: run_pipeline(utts, teacher.hf_dir))]
        results = {}
        for name, fn in pairs:
            hyps, secs = fn()
            results[name] = (wer_of(utts, hyps), secs)
            print(f"{set_name:16s} {name:26s} WER {results[name][0]:6.2f}  {secs:7.1f} s  {audio_s / secs:6.1f} audio-s/s", flush=True)
        for ours, peer in [("speechkd ctranslate2", "faster-whisper per file"), ("speechkd transformers", "transformers pipeline")]:
            if ours in results:
                names = (ours, "speechkd ctranslate2, no packing", peer) if ours == "speechkd ctranslate2" else (ours, peer)
                for name in names:
                    w, s = results[name]
                    rows.append(f"| {set_name} | {len(utts)} | {audio_s:.0f} | {name} | {w:.2f} | {s:.1f} | {audio_s / s:.1f} | "
                                + ("1.00×" if name == peer else f"**{results[peer][1] / s:.2f}×**") + " |")
    body = ("## Pseudo-labelling throughput (`benchmarks/label.py`)\n\n" + provenance() + "\n"
            f"Teacher `{args.teacher}`, greedy, English, no timestamps; CTranslate2 compute type `{args.compute_type}` on "
            f"both sides; transformers fp32; {args.threads} threads. Speed-up = peer time / our time on the same files "
            "(ours: batch {bs}, length-sorted, short utterances packed into shared 30-s windows; the `no packing` row is "
            "the same engine with `pack=False`, one clip per window, to show what packing itself contributes).\n\n"
            "| set | files | audio s | system | label WER % | wall s | audio s/s | speed-up |\n|---|---|---|---|---|---|---|---|\n"
            .format(bs=args.batch_size) + "\n".join(rows) + "\n")
    update_section("label", body)
    print(body)


if __name__ == "__main__":
    main()
