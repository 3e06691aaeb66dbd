"""`speechkd train | student create`: students and the one training loop every method shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from speechkd.cli.args import add_config_args, config_from_args


def cmd_train(args: argparse.Namespace) -> int:
    from speechkd.train import RunConfig, train

    final = train(config_from_args(RunConfig, args), args.out, progress=not args.quiet)
    print(f"student saved to {final}; metrics: {Path(args.out) / 'metrics.jsonl'}")
    return 0


def cmd_student_create(args: argparse.Namespace) -> int:
    from speechkd.students import build_student, save_student
    from speechkd.students.whisper import WhisperStudentConfig

    extra = {}
    if args.pretrained and args.decoder_layers is None:  # unset: all of a pretrained model's layers
        extra["decoder_layers"] = None
    cfg = config_from_args(WhisperStudentConfig, args, **extra)
    model = build_student("whisper", cfg)
    save_student(model, args.out)
    layers = model.speechkd_layer_map
    source = f"pretrained {cfg.pretrained}" if cfg.pretrained else "teacher"
    print(f"student saved to {args.out}: {source} encoder layers {layers['encoder']}, decoder layers "
          f"{layers['decoder']}")
    return 0


def add_parsers(sub, command) -> None:
    from speechkd.students.whisper import WhisperStudentConfig
    from speechkd.train import RunConfig

    t = command(sub, "train", cmd_train, "distil a student (any method, any student type); resumes when re-run", [
        "speechkd train --config recipes/ctc_edge/conf/ctc.yaml --labels exp/labels/kept.jsonl --out exp/ctc",
        "speechkd train --labels exp/labels/kept.jsonl --teacher bundled:base --out exp/base-2dec "
        "--train.max-steps 300 --set student.decoder_layers=2"])
    t.add_argument("--out", required=True, type=Path, help="run folder: config.yaml, checkpoints/, final/, log/")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(t, RunConfig)

    s = command(sub, "student", None, "create students from teachers", [
        "speechkd student create --teacher bundled:base --decoder-layers 2 --out exp/base-2dec"])
    actions = s.add_subparsers(dest="student_command", required=True, metavar="ACTION",
                               help="create: cut a student from a teacher")
    c = command(actions, "create", cmd_student_create, "a Distil-Whisper student initialised from a Whisper teacher", [
        "speechkd student create --teacher bundled:base --decoder-layers 2 --out exp/base-2dec",
        "speechkd student create --teacher bundled:base --pretrained bundled:tiny.en --out exp/tiny-init"])
    c.add_argument("--out", required=True, type=Path, help="output dir (save_pretrained + speechkd_student.json)")
    add_config_args(c, WhisperStudentConfig)
