#!/usr/bin/env bash
# Usage: bash benchmarks/run_all.sh
# Regenerates every section of BENCHMARKS.md from one run, one benchmark at a time (they share the
# 2 cores; running them side by side would distort each other's timings). Needs ../shared beside the
# checkout for the real-speech sets, and `make install` (or `make bench`, which does both).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for script in synth teachers label filters targets whisper_student ctc_students export; do
  echo "== benchmarks/$script.py"
  "$PY" "benchmarks/$script.py"
done
echo "BENCHMARKS.md updated"
