"""Shared pieces of the benchmark scripts: machine description and BENCHMARKS.md section updates.

Each benchmark owns one section of BENCHMARKS.md between `<!-- NAME:start -->` and `<!-- NAME:end -->`
and rewrites only that section, so scripts can be rerun one at a time and the file always says which
command, date and machine produced each number.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SHARED_REAL = ROOT.parent / "shared" / "data" / "real"
HEADER = "# speechkd benchmarks\n\nEvery number below was written by the script named in its section; rerun it to reproduce.\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def provenance(command: str | None = None) -> str:
    command = command or "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Command: `{command}`  \nDate: {now}  \nMachine: {machine()}\n"


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md with `body`."""
    from speechkd.io import atomic_write_text

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)


def real_sets() -> dict[str, Path]:
    """The shared real-speech manifests (benchmarks may read ../shared; the product never does)."""
    if not SHARED_REAL.exists():
        raise SystemExit(f"{SHARED_REAL} not found: the real-speech benchmark sets live in ../shared beside the checkout")
    return {p.parent.name: p for p in sorted(SHARED_REAL.glob("*/manifest.jsonl"))}
