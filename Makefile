# mi-llm: `make demo` runs the whole pipeline on the bundled corpus; `make test` runs every test.
# Both create or refresh .venv first (idempotent; a no-op when pyproject.toml is unchanged).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on this disk; naming it exactly keeps pip off the CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
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

test: venv browser
	$(PY) -m pytest -q -p no:cacheprovider

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build
