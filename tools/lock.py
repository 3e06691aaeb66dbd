"""The lock file: exact versions that `make demo`, `make test` and CI install.

Usage:
    python tools/lock.py check                       # does requirements.lock satisfy pyproject.toml? (exit 1 if not)
    .venv-latest/bin/python tools/lock.py write      # freeze the running environment into requirements.lock
    .venv-latest/bin/python tools/lock.py versions   # the running environment's versions of pyproject's dependencies

pyproject.toml keeps ranges for people who install speechkd into their own environment; requirements.lock pins
every package (transitive ones, pip, setuptools and wheel included) to what the suite last passed with. `make lock`
regenerates it from a fresh environment with the newest releases pyproject allows; `make test-latest` runs the suite
in such an environment without touching the lock.

`check` runs before anything is installed, with whatever Python makes the virtual environment, so it must not need
a third-party package: it uses `packaging` when that is importable and otherwise the copy vendored inside pip (every
Python that can create a venv with pip has it).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
from datetime import datetime, timezone
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare system Python: pip's vendored copy, see the module docstring
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
# The extras `make install` asks for; the lock covers exactly these.
EXTRAS = ("dev", "ct2", "bundled", "sherpa")
REGENERATE = "Regenerate it with `make lock` (then `make test`), or bring pyproject.toml back in line with it."


class LockError(Exception):
    """requirements.lock is malformed or does not satisfy pyproject.toml."""


def project_requirements(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """Build requirements, dependencies and the named extras' dependencies, as pyproject.toml declares them."""
    data = tomllib.loads(pyproject.read_text())
    optional = data["project"].get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise LockError(f"{pyproject}: no extra named {', '.join(unknown)} (it has {', '.join(sorted(optional))})")
    lines = [*data["build-system"]["requires"], *data["project"]["dependencies"]]
    for extra in extras:
        lines += optional[extra]
    return [Requirement(line) for line in lines]


def read_lock(path: Path = LOCK) -> dict[str, Version]:
    """Canonical name -> pinned version; refuses anything but `name==version` lines and comments."""
    if not path.exists():
        raise LockError(f"{path} is missing. {REGENERATE}")
    return parse_pins(path.read_text().splitlines(), str(path))


def parse_pins(lines: list[str], source: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = (part.strip() for part in line.partition("=="))
        try:
            pinned = Version(version) if sep and name else None
        except InvalidVersion:
            pinned = None
        if pinned is None:
            raise LockError(f"{source}:{number}: '{raw}' is not of the form name==version. {REGENERATE}")
        key = canonicalize_name(name)
        if key in pins:
            raise LockError(f"{source}:{number}: {name} is pinned twice. {REGENERATE}")
        pins[key] = pinned
    return pins


def lock_problems(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """One line per requirement of this platform that the pins leave unmet (missing, or outside its range)."""
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name} is not in the lock (pyproject asks for '{req}')")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name} is locked at {pinned}, outside pyproject's '{req}'")
    return problems


def check(lock: Path = LOCK, pyproject: Path = PYPROJECT, extras: tuple[str, ...] = EXTRAS) -> None:
    problems = lock_problems(project_requirements(pyproject, extras), read_lock(lock))
    if problems:
        raise LockError(f"{lock.name} no longer satisfies {pyproject.name}:\n  - " + "\n  - ".join(problems)
                        + f"\n{REGENERATE} Nothing was installed.")
    header = lock.read_text().splitlines()[:5]
    python = ".".join(platform.python_version_tuple()[:2])
    if not any(f"Python {python}" in line for line in header):
        print(f"warning: {lock.name} was made with another Python than this {python} (see its header); "
              "some pins may have no wheel here", file=sys.stderr)


def frozen() -> list[str]:
    """`name==version` of every package in the running environment but the editable speechkd itself.

    Local version labels are dropped (torch's `+cpu`): they name a build index, and `torch==2.13.0` matches the
    CPU wheel where it lies on disk as well as the PyPI one elsewhere."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if not sep:  # a direct URL or path: not reproducible from an index
            raise LockError(f"refusing to lock '{line}': install it from an index first")
        lines.append(f"{name}=={version.split('+', 1)[0]}")
    return sorted(lines, key=str.lower)


def write(lock: Path = LOCK) -> None:
    pins = frozen()
    problems = lock_problems(project_requirements(), parse_pins(pins, "pip freeze"))
    if problems:
        raise LockError("this environment does not satisfy pyproject.toml:\n  - " + "\n  - ".join(problems))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    python = ".".join(platform.python_version_tuple()[:2])
    text = (f"# Exact versions for `make demo`, `make test` and CI; generated by `make lock` on {now}\n"
            f"# with Python {python} on {platform.system()} {platform.machine()}, extras {','.join(EXTRAS)}. "
            "Do not edit by hand.\n" + "\n".join(pins) + "\n")
    # Atomic: a killed `make lock` leaves the old lock, never half a new one.
    fd, tmp = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, lock)
    print(f"wrote {lock} ({len(pins)} packages)")


def versions() -> str:
    """`name version` of pyproject's dependencies (with the locked extras) in the running environment."""
    from importlib.metadata import PackageNotFoundError, version

    rows = []
    for name in sorted({canonicalize_name(r.name) for r in project_requirements()}):
        try:
            rows.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            rows.append(f"{name} (not installed)")
    return ", ".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "write", "versions"))
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check()
        elif args.command == "write":
            write()
        else:
            print(versions())
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
