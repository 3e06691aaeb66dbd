"""The student benchmark's --quick mode runs end to end (tiny settings: a smoke test of the script, not a measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_whisper_student_benchmark_quick(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "whisper_student.py"), "--quick", "--work",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "whisper_student.json").read_text())
    assert {r["model"] for r in result["rows"]} == {"teacher", "tiny.en (not distilled)", "dec2 filtered",
                                                    "tiny.en filtered", "tiny.en unfiltered"}
    assert all(0 <= r["wer"] for r in result["rows"]) and result["data"]["n_kept"] < result["data"]["n_train"]
    assert "tiny.en: filtered <= unfiltered on" in proc.stdout  # the report renders, goal checks included
    # Speculative decoding reproduces the teacher's greedy transcripts.
    assert result["speculative"]["identical"] == result["speculative"]["num_clips"] > 0
