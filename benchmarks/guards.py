"""Whisper decoding with and without the hallucination guards, beside faster-whisper's transcribe(), same model.

Usage:
    .venv/bin/python benchmarks/guards.py                          # base int8; speechocean 500, LJ/Arctic 100, synth
    .venv/bin/python benchmarks/guards.py --max-so 100 --max-real 20 --no-write   # quick look, BENCHMARKS.md alone

Teacher: bundled base (multilingual, forced English), CTranslate2 int8 on both sides, 2 threads, one 30-s window
per clip. Rows per set:
- speechkd, guarded: `WhisperTeacher.transcribe` (ctranslate2 backend, batch 8) with the default guards
  (temperature fallback 0, 0.2 ... 1.0 on compression ratio > 2.4 or avg log-prob < -1; token budget
  12 + 8/s of audio; a token n-gram repeated 10 times ends the hypothesis);
- speechkd, raw greedy: the same call with the guards off (half the decoder context as the only limit);
- faster-whisper `transcribe()` with its defaults (beam 5, best of 5, temperature fallback), English;
- faster-whisper greedy: beam 1, temperature 0 only (no fallback).
A loop is a hypothesis with more than 5 words per second of audio, or one that DESIGN.md's repetition rule fires on
(a character or a 2+ character substring repeated more than 10 times in a row). WER after Whisper's English
normaliser. Time: wall seconds of the whole set (model load excluded, after a warm-up clip).

Then the label check: the speechocean clips are pseudo-labelled (guarded, packed, as `speechkd label` does) and
filtered with the default filter config; every clip on which raw greedy loops must come out either not looped or
dropped (recall 1.0), and no kept label may loop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, provenance, real_sets, update_section  # noqa: E402

TEACHER = "bundled:base"
COMPUTE_TYPE = "int8"
THREADS = 2
BATCH = 8
LOOP_WORDS_PER_SECOND = 5.0
SO_SET = "speechocean762_train"


def is_loop(text: str, seconds: float) -> bool:
    from speechkd_runtime.guards import text_repetition

    return len(text.split()) > LOOP_WORDS_PER_SECOND * seconds or text_repetition(text)


def decoders(teacher):
    """name -> function(list of clips) -> list of texts, each on the same CTranslate2 weights."""
    from faster_whisper import WhisperModel

    from speechkd_runtime.guards import RAW_GREEDY

    fw = WhisperModel(str(teacher.ct2_dir), device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=THREADS)

    def fw_run(clips, **opts):
        out = []
        for clip in clips:
            segments, _ = fw.transcribe(clip, language="en", vad_filter=False, **opts)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out

    return {
        "speechkd guarded": lambda clips: teacher.transcribe(clips, backend="ctranslate2", batch_size=BATCH),
        "speechkd raw greedy": lambda clips: teacher.transcribe(clips, backend="ctranslate2", batch_size=BATCH,
                                                                guards=RAW_GREEDY),
        "faster-whisper defaults (beam 5, fallback)": lambda clips: fw_run(clips),
        "faster-whisper greedy, no fallback": lambda clips: fw_run(clips, beam_size=1, best_of=1, temperature=0.0),
    }


def label_check(teacher, utts, raw_loops: set[str], work: Path) -> dict:
    from speechkd.filters import FilterConfig, filter_labels
    from speechkd.label import LabelConfig, pseudo_label

    cfg = LabelConfig(teacher=TEACHER, compute_type=COMPUTE_TYPE, num_threads=THREADS)
    t0 = time.perf_counter()
    records = list(pseudo_label(utts, teacher, cfg, progress=True))
    seconds = time.perf_counter() - t0
    scored, report = filter_labels(records, FilterConfig())
    looped = {r["id"] for r in scored if is_loop(r["text"], r["duration"])}
    kept_loops = sorted(r["id"] for r in scored if r["keep"] and r["id"] in looped)
    handled = [u for u in raw_loops if u not in looped or not next(r["keep"] for r in scored if r["id"] == u)]
    cut = sum(1 for r in scored if r["guard"]["cut"])
    work.mkdir(parents=True, exist_ok=True)
    (work / "labels_scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
    return {"n": len(scored), "kept": sum(r["keep"] for r in scored), "label_loops": len(looped),
            "kept_loops": kept_loops, "raw_loops": len(raw_loops), "raw_loops_handled": len(handled),
            "cut_by_guard": cut, "fallback_labels": sum(1 for r in scored if r["guard"]["fallbacks"]),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-so", type=int, default=500, help="speechocean762_train clips (every k-th, all speakers)")
    ap.add_argument("--max-real", type=int, default=100, help="clips of ljspeech_385 and cmu_arctic_cathy each")
    ap.add_argument("--synth-utts", type=int, default=400, help="synthetic corpus size (its test split is used)")
    ap.add_argument("--work", type=Path, default=ROOT / "exp" / "bench_guards")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = ap.parse_args()

    import torch

    from speechkd.data import decode, open_data
    from speechkd.metrics import score
    from speechkd.synth import SynthConfig, synthesize_corpus
    from speechkd.teachers import load_whisper

    torch.set_num_threads(THREADS)
    corpus = synthesize_corpus(args.work / "corpus", SynthConfig(num_utterances=args.synth_utts, seed=0))
    shared = real_sets()
    so_all = open_data(shared[SO_SET], require_text=True)
    step = max(1, len(so_all) // args.max_so)
    sets = {SO_SET: so_all[::step][: args.max_so],
            "synthetic test": open_data(corpus / "test.jsonl", require_text=True)}
    for name in ("ljspeech_385", "cmu_arctic_cathy"):
        sets[name] = open_data(shared[name], require_text=True)[: args.max_real]

    teacher = load_whisper(TEACHER, compute_type=COMPUTE_TYPE, cpu_threads=THREADS)
    teacher.ct2_model  # noqa: B018 - load (and for HF-only teachers convert) before any timing
    runs = decoders(teacher)
    warm = [decode(sets["synthetic test"][0])]
    for fn in runs.values():
        fn(warm)

    rows, raw_loops_so = [], set()
    for set_name, utts in sets.items():
        clips = [decode(u) for u in utts]
        refs = [u.text for u in utts]
        seconds = [len(c) / 16000 for c in clips]
        for name, fn in runs.items():
            t0 = time.perf_counter()
            hyps = fn(clips)
            wall = time.perf_counter() - t0
            loops = [u.id for u, h, s in zip(utts, hyps, seconds) if is_loop(h, s)]
            if set_name == SO_SET and name == "speechkd raw greedy":
                raw_loops_so = set(loops)
            rows.append({"set": set_name, "decoder": name, "n": len(utts), "audio_s": sum(seconds),
                         "wer": score(refs, hyps).wer, "loops": len(loops), "loop_ids": loops, "seconds": wall})
            print(f"{set_name:22s} {name:45s} WER {rows[-1]['wer']:6.2f} loops {len(loops):3d} {wall:7.1f} s",
                  flush=True)
    check = label_check(teacher, sets[SO_SET], raw_loops_so, args.work)
    print(json.dumps(check), flush=True)
    (args.work / "results.json").write_text(json.dumps({"rows": rows, "label_check": check}, indent=2))
    text = render(rows, check, args)
    print(text)
    if not args.no_write:
        update_section("guards", text)


def render(rows: list[dict], check: dict, args) -> str:
    def row_of(set_name: str, decoder: str) -> dict:
        return next(r for r in rows if r["set"] == set_name and r["decoder"] == decoder)

    lines = ["## Whisper hallucination guards vs faster-whisper (`benchmarks/guards.py`)", "", provenance(), "",
             f"Teacher `{TEACHER}` (multilingual, forced English), CTranslate2 `{COMPUTE_TYPE}` on both sides, "
             f"{THREADS} threads, one 30-s window per clip, model load not timed; speechkd batches {BATCH} clips, "
             "faster-whisper decodes one at a time (its `transcribe()` API). A loop: more than "
             f"{LOOP_WORDS_PER_SECOND:g} words per second of audio, or DESIGN.md's repetition rule on the text. "
             f"Sets: {args.max_so} speechocean762_train clips (every k-th of the 1,000: children and adults, 125 "
             f"non-native speakers), the synthetic test split, the first {args.max_real} of LJ and of Arctic.", "",
             "| set | decoder | clips | WER % | loops | seconds | time vs speechkd raw greedy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        raw = row_of(r["set"], "speechkd raw greedy")
        lines.append(f"| {r['set']} | {r['decoder']} | {r['n']} | {r['wer']:.2f} | {r['loops']} | {r['seconds']:.1f} | "
                     f"{r['seconds'] / raw['seconds']:.2f}x |")
    lines += ["", "Goals, per set: loops with the guards <= faster-whisper defaults' loops; WER with the guards <= "
              "without; extra decoding time on LJ/Arctic within 10 %.", ""]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        g, raw = row_of(set_name, "speechkd guarded"), row_of(set_name, "speechkd raw greedy")
        fw = row_of(set_name, "faster-whisper defaults (beam 5, fallback)")
        lines.append(f"- {set_name}: loops {g['loops']} vs faster-whisper {fw['loops']} "
                     f"({'met' if g['loops'] <= fw['loops'] else 'MISSED'}); WER {g['wer']:.2f} vs raw {raw['wer']:.2f} "
                     f"({'met' if g['wer'] <= raw['wer'] else 'MISSED'}); time {100 * (g['seconds'] / raw['seconds'] - 1):+.1f} %")
    lines += ["", f"Labels of the {check['n']} speechocean clips (guarded, packed, `speechkd label`, "
              f"{check['seconds']:.0f} s) through the default filter: {check['kept']} kept; "
              f"{check['cut_by_guard']} cut by a guard, {check['fallback_labels']} decoded after a temperature fallback; "
              f"looped labels {check['label_loops']}, kept looped labels {len(check['kept_loops'])}. "
              f"Clips on which raw greedy loops: {check['raw_loops']}; their labels not looped or dropped: "
              f"{check['raw_loops_handled']} (recall "
              f"{check['raw_loops_handled'] / check['raw_loops'] if check['raw_loops'] else float('nan'):.2f})."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
