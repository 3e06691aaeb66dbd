"""requirements.lock: its format, its agreement with pyproject.toml, and the refusal `make` gives when they drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import lock  # noqa: E402

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
[project]
name = "x"
version = "0"
dependencies = ["transformers>=4.45,<6,!=5.25.0", "numpy>=1.24", "pywin32>=300; sys_platform == 'win32'"]
[project.optional-dependencies]
dev = ["pytest>=7"]
"""


def write_project(tmp_path: Path, lock_lines: list[str]) -> tuple[Path, Path]:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "requirements.lock").write_text("# header, with Python 3.11\n" + "\n".join(lock_lines) + "\n")
    return tmp_path / "pyproject.toml", tmp_path / "requirements.lock"


def problems(tmp_path: Path, lock_lines: list[str]) -> list[str]:
    pyproject, path = write_project(tmp_path, lock_lines)
    return lock.lock_problems(lock.project_requirements(pyproject, extras=("dev",)), lock.read_lock(path))


def test_a_lock_inside_every_range_passes(tmp_path):
    # pywin32's marker is false here, so it needs no pin; names are compared canonically (NumPy == numpy).
    assert problems(tmp_path, ["NumPy==2.4.6", "transformers==5.24.0", "setuptools==84.2.1", "pytest==9.0.0"]) == []


def test_an_excluded_release_and_a_missing_package_are_both_named(tmp_path):
    found = problems(tmp_path, ["numpy==2.4.6", "transformers==5.25.0", "setuptools==84.2.1"])
    assert len(found) == 2
    assert "transformers is locked at 5.25.0, outside" in found[0]
    assert found[1].startswith("pytest is not in the lock")


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "-e .", "numpy==2.4.6 ; extra", "==1.0"])
def test_lines_that_are_not_exact_pins_are_refused_with_their_line_number(tmp_path, line):
    _, path = write_project(tmp_path, ["pytest==9.0.0", line])
    with pytest.raises(lock.LockError, match=r"requirements.lock:3: .* is not of the form name==version"):
        lock.read_lock(path)


def test_check_stops_before_installing_and_says_how_to_regenerate(tmp_path):
    pyproject, path = write_project(tmp_path, ["numpy==2.4.6", "transformers==5.25.0", "setuptools==84.2.1",
                                               "pytest==9.0.0"])
    with pytest.raises(lock.LockError) as err:
        lock.check(path, pyproject, extras=("dev",))
    message = str(err.value)
    assert "transformers" in message and "make lock" in message and "Nothing was installed" in message


def test_an_unknown_extra_is_refused(tmp_path):
    pyproject, _ = write_project(tmp_path, [])
    with pytest.raises(lock.LockError, match="no extra named gpu"):
        lock.project_requirements(pyproject, extras=("gpu",))


def test_the_checked_in_lock_satisfies_pyproject_and_matches_the_makefile():
    # The same check `make` runs first, as a subprocess with this Python, on the real files.
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    makefile_extras = next(line.split(":=")[1].strip() for line in (ROOT / "Makefile").read_text().splitlines()
                           if line.startswith("EXTRAS :="))
    assert tuple(makefile_extras.split(",")) == lock.EXTRAS
    assert lock.read_lock()["torch"].base_version == "2.13.0"  # the machines' CPU wheel, never a CUDA build

