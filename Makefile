# mi-llm: `make demo` runs the whole pipeline on the bundled corpus; `make test` runs every test.
# Both create or refresh .venv first (idempotent; a no-op when pyproject.toml, constraints.txt and
# tools/llama_cpp are unchanged).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test lint bench browser clean lock gpu-check

# Every package is pinned in constraints.txt (regenerate: `make lock`). llama-cpp-python is built
# by tools/llama_cpp/build.sh for every x86-64 CPU (runtime dispatch, no AMX kernels; never
# -march=native), cached per version and flags under $MI_LLM_HOME/wheels.
LLAMA_CPP_VERSION = $(shell sed -n 's/^llama_cpp_python==//p' constraints.txt)

$(STAMP): pyproject.toml constraints.txt tools/llama_cpp/build.sh tools/llama_cpp/cpu_variants.cmake
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt pip
	# The CPU build of torch lies on this disk; naming it exactly keeps pip off the CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	tools/llama_cpp/build.sh $(PY) $(LLAMA_CPP_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# llama.cpp's HF -> GGUF converter (for `mi-llm export --gguf`), from the llama-cpp-python sdist;
	# without it only GGUF export is missing (its test skips), so a failed fetch does not stop set-up.
	$(PY) -m mi_llm.train.gguf --fetch || echo "warning: llama.cpp's GGUF converter not fetched; mi-llm export --gguf will retry"
	touch $(STAMP)

venv: $(STAMP)

# Headless Chromium for the page tests (Debian packages; needs root, as in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing and not root: page tests will skip"; fi; }

demo: venv
	$(VENV)/bin/mi-llm demo

# Lint, format and types of the package first (seconds), then every test.
lint: venv
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) -m ruff format --check src tests benchmarks tools
	$(PY) -m mypy

test: venv browser lint
	$(PY) -m pytest -q -p no:cacheprovider

# The GPU path (bf16 LoRA SFT through accelerate, hf predictions on CUDA, the adapter reloaded on
# CPU) on one NVIDIA GPU, under 8 minutes; a python with a CUDA torch, transformers, peft and
# accelerate (GPU_PYTHON=...; default: .venv's if built, else python3). Report: build/gpu-check/.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

bench: venv
	$(PY) benchmarks/run_all.py

# Re-resolve every dependency at today's newest versions into constraints.txt (then test, commit).
lock:
	PYTHON=$(PYTHON) tools/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache build
