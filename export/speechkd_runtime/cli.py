"""Transcribe audio files with an exported speechkd model.

Usage:
    python -m speechkd_runtime MODEL_DIR a.wav [b.flac ...] [--num-threads N] [--model-file model.onnx] [--json]
    python -m speechkd_runtime MODEL_DIR a.wav --lm lm.arpa [--beam-size 8]    # CTC: beam search with an LM
    python -m speechkd_runtime MODEL_DIR a.wav --greedy                       # CTC: ignore a shipped LM

Prints one line per file: `path<TAB>transcript` (or a JSON object per line with --json).
Files at other sample rates are resampled; multichannel files are averaged to mono.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .audio import AudioError
from .ctc import ModelDirError, read_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m speechkd_runtime", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="directory written by `speechkd export`")
    p.add_argument("audio", nargs="+", help="audio files (anything soundfile reads: wav, flac, ogg, ...)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="onnxruntime intra-op threads, and CTC calls in flight at once (default: all cores)")
    p.add_argument("--variant", "--model-file", dest="variant", default=None,
                   help="CTC: the ONNX file inside MODEL_DIR (default: config.json's default_model); "
                        "Whisper: fp32 or int8 (default: config.json's default_variant)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="utterances per onnxruntime call (default 8; 1 for dynamic-int8 models)")
    p.add_argument("--lm", default=None, help="CTC: an ARPA word n-gram for beam search (default: the one "
                                                "config.json's `decoding` ships, else greedy decoding)")
    p.add_argument("--beam-size", type=int, default=None, help="CTC: beam width (with the LM's other settings)")
    p.add_argument("--greedy", action="store_true", help="CTC: greedy decoding even if an LM is shipped")
    p.add_argument("--raw-greedy", action="store_true", help="Whisper: plain greedy decoding, without the "
                   "hallucination guards (temperature fallback, duration budget, repetition rule)")
    p.add_argument("--json", action="store_true", help="print JSON lines with path, text and seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_type = read_config(args.model_dir).get("model_type")
        if model_type == "ctc":
            from .ctc import CtcModel

            beam = None
            if args.beam_size is not None:  # the shipped settings, with another beam width
                from dataclasses import replace

                from .ctc import shipped_decoding

                beam = replace(shipped_decoding(args.model_dir)[1], beam_size=args.beam_size)
            model = CtcModel(args.model_dir, model_file=args.variant, num_threads=args.num_threads,
                             lm=args.lm, beam=beam, greedy=args.greedy)
            run = lambda path: model.transcribe_files([path], batch_size=args.batch_size)[0]  # noqa: E731
        else:
            from . import transcribe

            kwargs = {k: v for k, v in (("num_threads", args.num_threads), ("variant", args.variant)) if v}
            if args.raw_greedy:
                from .guards import RAW_GREEDY

                kwargs["guards"] = RAW_GREEDY
            run = lambda path: transcribe(args.model_dir, path, **kwargs)  # noqa: E731
        failed = 0
        for path in args.audio:
            t0 = time.perf_counter()
            try:
                text = run(path)
            except AudioError as e:  # one unreadable file should not stop the others
                print(f"error: {e}", file=sys.stderr)
                failed += 1
                continue
            seconds = time.perf_counter() - t0
            if args.json:
                print(json.dumps({"path": path, "text": text, "seconds": round(seconds, 3)}, ensure_ascii=False))
            else:
                print(f"{path}\t{text}")
            sys.stdout.flush()
    except ModelDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0
