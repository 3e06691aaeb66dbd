"""Teacher accuracy and speed: bundled Whisper teachers on both backends, synthetic and real speech.

Usage:
    .venv/bin/python benchmarks/teachers.py                       # full: tiny.en + base, both backends
    .venv/bin/python benchmarks/teachers.py --max-utts 20 --synth-utts 100 --teachers bundled:tiny.en

Writes the `teachers` section of BENCHMARKS.md: WER (Whisper English normaliser on both sides) and
real-time factor of each teacher x backend on the synthetic test split and on the first N utterances
of each ../shared/data/real set, all measured in one process on this machine; and the conversion
proof: greedy transcripts of each converted (CTranslate2 -> transformers) teacher vs faster-whisper on
the same model (fp32, beam 1, no timestamps) on 20 synthetic and 20 real utterances.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, provenance, real_sets, update_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="bundled:tiny.en,bundled:base")
    ap.add_argument("--backends", default="ctranslate2,transformers")
    ap.add_argument("--max-utts", type=int, default=100, help="utterances per real set")
    ap.add_argument("--synth-utts", type=int, default=400, help="size of the synthetic corpus (test split ~10%%)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", type=Path, default=ROOT / "exp" / "bench_teachers")
    args = ap.parse_args()

    from speechkd.data import open_data
    from speechkd.evaluate import WhisperRecognizer, evaluate, format_table
    from speechkd.synth import SynthConfig, synthesize_corpus
    from speechkd.teachers import load_whisper

    corpus = synthesize_corpus(args.work / "corpus", SynthConfig(num_utterances=args.synth_utts, seed=0))
    sets = {"synthetic test": open_data(corpus / "test.jsonl", require_text=True)}
    for name, manifest in real_sets().items():
        sets[name] = open_data(manifest, require_text=True)[: args.max_utts]

    from speechkd.data import decode
    from speechkd.teachers import compare_with_faster_whisper

    parity_rows = []
    parity_sets = {"synthetic": sets["synthetic test"][:20], "cmu_arctic_cathy": sets["cmu_arctic_cathy"][:20]}
    for spec in args.teachers.split(","):
        teacher = load_whisper(spec)
        for set_name, utts in parity_sets.items():
            audios = [decode(u) for u in utts]
            for features in ("faster-whisper", "teacher"):
                r = compare_with_faster_whisper(teacher, audios, features=features)
                parity_rows.append(f"| {spec} | {set_name} | {features} | {r['n_equal']}/{r['n']} |")
                print(parity_rows[-1], flush=True)

    rows = []
    for spec in args.teachers.split(","):
        teacher = load_whisper(spec)
        for backend in args.backends.split(","):
            rec = WhisperRecognizer(teacher, backend=backend, batch_size=args.batch_size)
            for set_name, utts in sets.items():
                r = evaluate(rec, utts, batch_size=args.batch_size, out_dir=args.work / spec.replace(":", "_") / backend / set_name.replace(" ", "_"))
                r["set"] = set_name
                rows.append(r)
                print(f"{rec.name:40s} {set_name:18s} WER {r['wer']:6.2f}  RTF {r['rtf']:.4f}", flush=True)

    cols = [("model", "teacher [backend]", "{}"), ("set", "set", "{}"), ("num_utterances", "utts", "{}"),
            ("wer", "WER %", "{:.2f}"), ("cer", "CER %", "{:.2f}"), ("rtf", "RTF", "{:.4f}"),
            ("num_parameters", "params (M)", "{:.1f}"), ("size_bytes", "MB", "{:.1f}")]
    body = ("## Teachers (bundled Whisper, both backends)\n\n" + provenance() + "\n"
            f"Greedy decoding, English, no timestamps, batch {args.batch_size}, fp32 (transformers) and CTranslate2 "
            "`default` compute type; WER after Whisper's English normaliser on both sides. Real sets: first "
            f"{args.max_utts} utterances of each `../shared/data/real` set; synthetic: the test split of a "
            f"{args.synth_utts}-utterance espeak-ng corpus (seed 0).\n\n" + format_table(rows, cols) + "\n"
            "\n### Conversion proof: converted transformers model vs faster-whisper on the same weights\n\n"
            "Greedy, fp32, no timestamps, English; transcripts compared after Whisper normalisation. `features`: "
            "`faster-whisper` feeds both sides faster-whisper's log-mel (isolates the weight conversion); `teacher` "
            "uses each side's own front end (HF pads audio to 30 s before the STFT, faster-whisper pads after), "
            "which is end-to-end agreement.\n\n| teacher | set | features | identical transcripts |\n|---|---|---|---|\n"
            + "\n".join(parity_rows) + "\n")
    update_section("teachers", body)
    print(format_table(rows, cols))


if __name__ == "__main__":
    main()
