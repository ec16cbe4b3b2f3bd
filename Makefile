# The common verbs. `make run` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint format protos bench-engine clean

setup: $(STAMP)

# Re-install when the dependency list changes. torch is pinned to 2.13.0 in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[engine,dev]"
	touch $(STAMP)

run: setup
	$(VENV)/bin/specdec up

test: setup protos
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check services tests benchmarks tools
	$(VENV)/bin/ruff format --check services tests benchmarks tools
	$(VENV)/bin/mypy services/engine

format: setup
	$(VENV)/bin/ruff check --fix services tests benchmarks tools
	$(VENV)/bin/ruff format services tests benchmarks tools

# Compiles protos/ into services/. The wire contract lands with the pipeline issue.
protos:
	@echo "protos: no .proto files yet"

# Cost of verifying k tokens vs one decode step, and batched vs sequential throughput.
bench-engine: setup
	$(PY) benchmarks/engine_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
