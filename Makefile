# Two entry points: `make demo` and `make test`. Each creates .venv and installs exactly requirements.lock.
#   make lock          regenerate requirements.lock from the newest releases pyproject.toml allows (then: make test)
#   make test-latest   the suite in a separate .venv-latest with those newest releases (the drift check); records
#                      the versions it used in BENCHMARKS.md
SHELL := bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
LATEST := .venv-latest
LATEST_PY := $(LATEST)/bin/python
# Must match tools/lock.py's EXTRAS: the lock covers exactly these.
EXTRAS := dev,ct2,bundled,sherpa

.PHONY: demo test install clean bench lock latest-env test-latest

# The lock is checked against pyproject.toml before anything is touched; then .venv is made anew, so it holds
# the locked packages and nothing left over from an older lock. --no-deps: the lock already lists every
# dependency, and `pip check` proves it. --no-build-isolation: the build backend is the locked setuptools.
$(STAMP): pyproject.toml $(LOCK) Makefile tools/lock.py
	$(PYTHON) tools/lock.py check
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps "$$(grep '^pip==' $(LOCK))"
	# torch is locked at 2.13.0: pip takes the CPU wheel on the development/CI machines (an unpinned torch
	# would pull a multi-GB CUDA build).
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PY=$(PY) bash recipes/demo/run.sh

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

bench: $(STAMP)
	bash benchmarks/run_all.sh

# A fresh environment with the newest releases pyproject.toml allows (torch stays at the machines' 2.13.0).
latest-env:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST_PY) -m pip install -q --upgrade pip setuptools wheel
	$(LATEST_PY) -m pip install -q torch==2.13.0
	$(LATEST_PY) -m pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" torch==2.13.0
	$(LATEST_PY) -m pip check

lock: latest-env
	$(LATEST_PY) tools/lock.py write

test-latest: latest-env
	set -o pipefail; $(LATEST_PY) -m pytest -q -ra tests 2>&1 | tee $(LATEST)/pytest.log; \
	status=$$?; $(LATEST_PY) benchmarks/environment.py --log $(LATEST)/pytest.log; exit $$status

clean:
	rm -rf $(VENV) $(LATEST) exp corpora .pytest_cache
