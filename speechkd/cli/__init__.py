"""`speechkd <command>`: thin commands over the library, one module per command group.

    data.py      synth, label, filter, targets, split, lm
    train.py     train, student create
    evaluate.py  eval, report
    export.py    export, verify
    args.py      flags generated from the config dataclasses (shared by all of the above)

Errors: a `SpeechkdError` (or the runtime's `RuntimeInputError`, or a missing file) is a user error: one line on
stderr, exit code 2 (1 for a failed verification), no traceback unless `--debug`. Anything else is a bug:
its traceback, exit code 3. Ctrl-C exits 130; long jobs resume when re-run. The codes: speechkd/errors.py.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

from speechkd.cli import data, evaluate, export, train
from speechkd.cli.args import HelpFormatter, add_config_args, config_from_args, merge_nested, parse_sets
from speechkd.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_USER_ERROR, user_errors

__all__ = ["add_config_args", "build_parser", "config_from_args", "main", "merge_nested", "parse_sets"]

COMMAND_GROUPS = (data, train, evaluate, export)
DEBUG_HELP = "show the full traceback of an error (by default a user error is one line)"


def command(sub, name: str, func: Callable[[argparse.Namespace], int] | None, summary: str,
            examples: Sequence[str]) -> argparse.ArgumentParser:
    """A sub-command with its summary, `--debug`, and an epilog of examples (kept on the parser for the tests)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=HelpFormatter)
    # SUPPRESS: a sub-command's default must not overwrite `speechkd --debug CMD` given before the command.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.examples = list(examples)
    if func is not None:
        p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from speechkd import __version__

    p = argparse.ArgumentParser(prog="speechkd", formatter_class=HelpFormatter,
                                description="Knowledge distillation for speech models: pseudo-label with a Whisper "
                                            "teacher, filter the labels, train small students, export them to ONNX.",
                                epilog="`speechkd COMMAND --help` explains every flag of a command, with examples.\n"
                                       "Exit codes: 0 ok, 1 a check failed (verify), 2 bad input/config/flags, "
                                       "3 internal error (a bug), 130 interrupted.")
    p.add_argument("--version", action="version", version=f"speechkd {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(sub, command)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(x for x in (args.command, getattr(args, "student_command", None)) if x)
    try:
        return args.func(args)
    except user_errors() as e:
        if args.debug:
            traceback.print_exc()
        print(f"speechkd {name}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"speechkd {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(f"speechkd {name}: internal error (a bug, not your input): please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR
