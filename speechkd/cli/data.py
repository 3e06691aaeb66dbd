"""`speechkd synth | label | filter | targets | split | lm`: the data side (corpora, pseudo-labels, label filters, teacher
targets, decoding LMs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechkd.cli.args import add_config_args, config_from_args

RAW_GREEDY_HELP = ("Whisper models: turn the hallucination guards off (temperature fallback, duration budget, "
                   "repetition rule) and decode plain greedy, for exact comparisons; same as --no-guards.enabled")


def raw_greedy(args: argparse.Namespace) -> dict:
    """The config override of --raw-greedy (shared by `label` and `eval`)."""
    return {"guards": {"enabled": False}} if args.raw_greedy else {}


def cmd_synth(args: argparse.Namespace) -> int:
    from speechkd.synth import SynthConfig, synthesize_corpus

    out = synthesize_corpus(args.out, config_from_args(SynthConfig, args))
    print(f"corpus written to {out}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from speechkd.label import LabelConfig, labels_to_dataset, run_label
    from speechkd.runlog import setup_logging

    cfg = config_from_args(LabelConfig, args, **raw_greedy(args))
    setup_logging(args.out.parent, "label")
    summary = run_label(cfg, args.data, args.out, progress=not args.quiet)
    if args.hf_out:
        labels_to_dataset(args.out, args.hf_out, data=args.data)
        print(f"HF dataset saved to {args.hf_out}")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from speechkd.filters import FilterConfig, run_filter, with_thresholds
    from speechkd.io import OutputPaths
    from speechkd.runlog import setup_logging

    cfg = with_thresholds(config_from_args(FilterConfig, args), args.threshold or [])
    setup_logging(args.out.parent, "filter")
    report = run_filter(cfg, args.labels, args.out)
    paths = OutputPaths(args.out)
    print(paths.sibling("report.md").read_text())
    print(f"kept {report['n_kept']} of {report['n_records']} -> {args.out}; all records with scores: "
          f"{paths.sibling('scored.jsonl')}; report: {paths.sibling('report.json')}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from speechkd.runlog import setup_logging
    from speechkd.targets import TargetsConfig, extract_targets

    cfg = config_from_args(TargetsConfig, args)
    setup_logging(args.out, "targets")
    summary = extract_targets(cfg, args.data, args.out, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from speechkd.splits import SplitConfig, run_split

    summary = run_split(config_from_args(SplitConfig, args), args.data, args.out, split_file=args.split_file)
    print(json.dumps(summary, indent=2))
    print(f"split: {args.out / 'split.json'}; manifests: {', '.join(str(args.out / f'{n}.jsonl') for n in summary)}")
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from speechkd.lm import DecodingLMConfig, build_decoding_lm

    summary = build_decoding_lm(config_from_args(DecodingLMConfig, args), args.out)
    print(json.dumps(summary, indent=2))
    print(f"use it: speechkd eval --model CTC_STUDENT --data D --lm {args.out}  (or speechkd export --lm {args.out})")
    return 0


def add_parsers(sub, command) -> None:
    from speechkd.filters import FilterConfig
    from speechkd.label import LabelConfig
    from speechkd.lm import DecodingLMConfig
    from speechkd.splits import SplitConfig
    from speechkd.synth import SynthConfig
    from speechkd.targets import TargetsConfig

    s = command(sub, "synth", cmd_synth, "synthesise an offline multi-speaker speech corpus (espeak-ng)", [
        "speechkd synth --out corpora/demo --num-utterances 400 --seed 0",
        "speechkd synth --out corpora/hard --config synth.yaml --noise-snr-db 10 --noise-color white"])
    s.add_argument("--out", required=True, type=Path, help="output corpus folder (train/dev/test manifests, audio/)")
    add_config_args(s, SynthConfig)

    lab = command(sub, "label", cmd_label, "pseudo-label audio with a Whisper teacher (resumable, sharded)", [
        "speechkd label --data corpora/demo/train.jsonl --out exp/labels/train.jsonl --teacher bundled:base",
        "speechkd label --data audio_dir/ --out exp/labels.jsonl --num-samples 2 --hf-out exp/labels_hf",
        "torchrun --nproc-per-node 4 -m speechkd label --data big.jsonl --out exp/labels.jsonl  # sharded"])
    lab.add_argument("--data", required=True, help="audio folder, JSONL manifest or saved HF dataset")
    lab.add_argument("--out", required=True, type=Path,
                     help="labels JSONL (siblings: .config.yaml, .skipped.jsonl, .summary.json)")
    lab.add_argument("--hf-out", type=Path, help="also save the labels as an HF dataset (save_to_disk) here")
    lab.add_argument("--quiet", action="store_true", help="no progress bar")
    lab.add_argument("--raw-greedy", action="store_true", help=RAW_GREEDY_HELP)
    add_config_args(lab, LabelConfig)

    f = command(sub, "filter", cmd_filter, "score pseudo-labels (with or without references) and keep the good ones", [
        "speechkd filter --labels exp/labels/train.jsonl --out exp/labels/kept.jsonl",
        "speechkd filter --labels exp/labels.jsonl --out exp/kept.jsonl --threshold wer=20 --threshold nll=none"])
    f.add_argument("--labels", required=True, type=Path, help="labels JSONL from `speechkd label`")
    f.add_argument("--out", required=True, type=Path,
                   help="kept records JSONL (siblings: .scored.jsonl, .report.json/.md)")
    f.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="drop when score NAME > VALUE (repeatable; VALUE none = rank only)")
    add_config_args(f, FilterConfig)

    tg = command(sub, "targets", cmd_targets,
                 "precompute a teacher's hidden states once (sharded, resumable), for representation distillation", [
                     "speechkd targets --data corpora/demo/train.jsonl --out exp/targets/base --teacher bundled:base "
                     "--layers 3,6",
                     "speechkd targets --data train.jsonl --out exp/targets/hubert --teacher facebook/hubert-base-ls960 "
                     "--layers 4,8,12 --device cuda",
                     "torchrun --nproc-per-node 4 -m speechkd targets --data big.jsonl --out exp/targets/big  # sharded"])
    tg.add_argument("--data", required=True, help="audio folder, JSONL manifest or saved HF dataset")
    tg.add_argument("--out", required=True, type=Path,
                    help="store folder: store.json, shard-*.safetensors, index-*.jsonl, skipped.jsonl, log/")
    tg.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(tg, TargetsConfig)

    sp = command(sub, "split", cmd_split, "split data by speaker (no voice on both sides), stratified, reproducible", [
        "speechkd split --data ../shared/data/real/speechocean762_train/manifest.jsonl --out exp/so762 "
        "--speakers 85,15,25",
        "speechkd split --data corpus.jsonl --out exp/split --split-file data/splits/speechocean762_train.json"])
    sp.add_argument("--data", required=True, help="manifest, audio folder or saved dataset with a `speaker` column")
    sp.add_argument("--out", required=True, type=Path, help="folder for split.json and one manifest per split")
    sp.add_argument("--split-file", help="apply this split file (checked against the data) instead of making one")
    add_config_args(sp, SplitConfig)

    lm = command(sub, "lm", cmd_lm, "word n-gram (Kneser-Ney, ARPA) from pseudo-labels or text, for CTC beam search", [
        "speechkd lm --text exp/labels/kept.jsonl --out exp/lm/3gram.arpa --order 3"])
    lm.add_argument("--out", required=True, type=Path, help="ARPA file to write (its config is saved beside it)")
    add_config_args(lm, DecodingLMConfig)
