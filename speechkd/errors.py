"""The one base class for errors a user can fix, and the CLI's exit codes.

Every stage raises a subclass of `SpeechkdError` (bad input, a bad config, a missing file, a model dir that
cannot be loaded) with a message that names the file and the fix. The CLI catches this base once
(speechkd/cli/__init__.py) and prints the message without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

# Exit codes of `speechkd`, documented in README.md ("Exit codes").
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran, and what it checked failed (e.g. `verify`: ONNX disagrees with PyTorch)
EXIT_USER_ERROR = 2  # bad input, config or flags (argparse uses 2 for bad flags as well)
EXIT_INTERNAL_ERROR = 3  # an unexpected exception: a bug, reported with its traceback
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); long jobs resume when re-run


class SpeechkdError(Exception):
    """A problem the user can fix; the message says what and how. The CLI exits with `exit_code`."""

    exit_code = EXIT_USER_ERROR


def user_errors() -> tuple[type[BaseException], ...]:
    """Everything the CLI reports as a user error: speechkd's base, the on-device runtime's base (which cannot
    import speechkd), and a missing file named on the command line."""
    from speechkd_runtime.errors import RuntimeInputError

    return SpeechkdError, RuntimeInputError, FileNotFoundError
