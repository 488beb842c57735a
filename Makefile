# Two commands for a fresh machine (see README.md): `make demo` and `make test`.
# Each creates the virtual environment .venv and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,micro,tfmot,plot]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tflowrank demo -o $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check tflowrank tests examples bench

bench: $(STAMP)
	$(PY) bench/chain_speedup.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
