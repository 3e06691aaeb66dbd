"""Run logging: to stderr and to `<run_dir>/log/<name>.log`, with the environment recorded first.

Like icefall, every run starts its log with the command line, versions and machine, so a result
found in a log months later can be traced to what produced it.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, not the one seen at set-up.

    Callers (notebooks, test runners, tqdm) swap sys.stderr; a handler holding the old stream would write
    into a closed file.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def environment() -> dict:
    import numpy
    import torch

    env = {
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
    }
    for mod in ("transformers", "ctranslate2", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # optional dependency absent: record that, don't fail
            env[mod] = None
    from speechkd import __version__

    env["speechkd"] = __version__
    return env


def setup_logging(run_dir: str | os.PathLike | None = None, name: str = "run", level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when run_dir is given, append to run_dir/log/<name>.log."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    if not any(getattr(h, "_speechkd", False) for h in root.handlers):
        sh = _StderrHandler()
        sh.setFormatter(fmt)
        sh._speechkd = True  # type: ignore[attr-defined]
        root.addHandler(sh)
    try:  # transformers' generation deprecation notices drown our progress output; keep its errors
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    logger = logging.getLogger("speechkd")
    if run_dir is not None:
        log_dir = Path(run_dir) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        path = (log_dir / f"{name}.log").resolve()
        if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(fmt)
            root.addHandler(fh)
        logger.info("environment: %s", environment())
    return logger
