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

# two test processes share the 2 cores (one per test file at a time); the tests whose assertions
# depend on measured latencies then run alone
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not timing" --durations=15
	$(PY) -m pytest -q -m timing

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not timing"

lint: $(STAMP)
	$(VENV)/bin/ruff check tflowrank tests examples bench

bench: $(STAMP)
	$(PY) bench/chain_speedup.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
