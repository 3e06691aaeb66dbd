"""The runtime's one base for errors a user can fix (a bad model dir, audio, LM file or front-end config).

The runtime cannot import speechkd, so this base stands beside `speechkd.errors.SpeechkdError`; the speechkd CLI
catches both (`speechkd.errors.USER_ERRORS`), the runtime's CLI this one.
"""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """An input the runtime cannot use; the message names the file and the fix."""
