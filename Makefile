# TenSafe — the two commands: `make demo` (end-to-end DP fine-tune) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt --only-binary=cryptography

.PHONY: install test test-unit test-integration lint bench demo up clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel

install: $(BIN)/python
	$(PIP) -q -e ".[server,dev]"

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench.run_all

demo: install
	$(BIN)/python scripts/demo.py

up: install
	$(BIN)/tensafe up

clean:
	rm -rf build *.egg-info reports .pytest_cache
