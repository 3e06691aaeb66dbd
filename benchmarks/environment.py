"""The environment section of BENCHMARKS.md: locked versions beside the newest allowed ones, and the drift check's result.

Usage:
    make test-latest                                                   # runs this after the suite
    .venv-latest/bin/python benchmarks/environment.py --log .venv-latest/pytest.log

Run with the Python of the environment whose versions it should report (`make test-latest` uses .venv-latest, the
newest releases pyproject.toml allows); `--log` is that environment's pytest output, whose closing line is quoted.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import ROOT, provenance, update_section  # noqa: E402
from lock import LOCK, canonicalize_name, project_requirements, read_lock  # noqa: E402


def pytest_summary(log: Path) -> str:
    """The suite's closing line ("N passed, ... in Ts"), or a note that there is none."""
    lines = [line.strip("= ").strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    closing = [line for line in lines if " in " in line and ("passed" in line or "failed" in line or "error" in line)]
    return closing[-1] if closing else f"no pytest summary in {log}"


def version_rows() -> list[tuple[str, str, str]]:
    """(package, locked, installed here) for pyproject's direct dependencies and the locked extras."""
    pins = read_lock(LOCK)
    rows = []
    for name in sorted({canonicalize_name(r.name) for r in project_requirements()}):
        try:
            here = version(name).split("+", 1)[0]
        except PackageNotFoundError:
            here = "not installed"
        rows.append((name, str(pins.get(name, "not locked")), here))
    return rows


def render(rows: list[tuple[str, str, str]], summary: str) -> str:
    changed = [name for name, locked, here in rows if locked != here]
    body = ["## Environment: locked versions and the drift check (`make test-latest`)", "",
            "`make demo`, `make test` and CI install `requirements.lock` exactly. `make test-latest` installs the newest "
            "releases that pyproject.toml allows into `.venv-latest` and runs the whole suite there, so an upstream "
            "release that breaks speechkd shows up here before users meet it. Versions it used, beside the lock "
            "(direct dependencies; the lock pins every transitive one too):", "",
            "| package | requirements.lock | newest allowed (drift check) |", "|---|---|---|"]
    body += [f"| {name} | {locked} | {'**' + here + '**' if locked != here else here} |" for name, locked, here in rows]
    body += ["", f"Drift check result: {summary}.",
             f"Newer than the lock: {', '.join(changed) if changed else 'none'}.", "",
             provenance("make test-latest")]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="pytest output of the run in this environment")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    text = render(version_rows(), pytest_summary(args.log))
    if args.no_write:
        print(text)
    else:
        update_section("environment", text)
        print(f"updated the environment section of {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
