# The common verbs. `make run` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test test-fuzz lint format protos bench bench-engine demo-models helm-lint clean

setup: $(STAMP)

# Re-install when the dependency list changes. torch is pinned to 2.13.0 in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[engine,dev]"
	touch $(STAMP)

run: setup protos
	$(VENV)/bin/specdec up

test: setup protos
	$(PY) -m pytest

# The RPC fuzz at 10^4 cases per test (make test runs it at SPECDEC_FUZZ_EXAMPLES, default 100).
test-fuzz: setup protos
	SPECDEC_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q -m fuzz tests/test_fuzz.py

lint: setup
	$(VENV)/bin/ruff check services tests benchmarks tools
	$(VENV)/bin/ruff format --check services tests benchmarks tools
	$(VENV)/bin/mypy services/engine

format: setup
	$(VENV)/bin/ruff check --fix services tests benchmarks tools
	$(VENV)/bin/ruff format services tests benchmarks tools

# Compiles protos/ into services/v1/ (imported as specdec.v1), with .pyi stubs.
PROTOS := $(wildcard protos/specdec/v1/*.proto)
PROTO_STAMP := services/v1/.generated

protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	rm -rf build/protos && mkdir -p build/protos
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=build/protos --pyi_out=build/protos \
		--grpc_python_out=build/protos $(PROTOS)
	cp build/protos/specdec/v1/*.py build/protos/specdec/v1/*.pyi services/v1/
	touch $@

# Side-by-side benchmark on the demo pair: result.json, REPORT.md and plots in bench-out/.
bench: setup protos
	$(VENV)/bin/specdec bench --target models/demo-target --draft models/demo-draft --out bench-out

# Cost of verifying k tokens vs one decode step, and batched vs sequential throughput.
bench-engine: setup
	$(PY) benchmarks/engine_step.py

# Render, lint and schema-check the Helm chart (Helm's Go engine in-process, no binary), and lint
# the Dockerfile.
helm-lint: setup
	$(PY) -m pytest -q tests/test_helm.py
	$(VENV)/bin/hadolint Dockerfile

# Train the demo pair into models/ (hours on a CPU; resumable: run it again to continue).
demo-models: setup
	$(PY) tools/train_demo.py --out models

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
