#!/usr/bin/env bash
# LLaMA-Factory in a venv of its own, OUTSIDE the repository, for benchmarks/bench_train.py.
#
#   bash benchmarks/setup_llamafactory.sh            # -> $MI_LLM_HOME/bench/lf-venv
#   LF_VENV=/path/to/venv bash benchmarks/setup_llamafactory.sh
#
# Quirks on CPU (see shared/docs/peer-baselines.md): PyPI's torchvision and torchaudio do not
# load beside torch 2.13.0, so torchvision is removed and torchaudio is replaced by an empty
# package (LLaMA-Factory imports it at start-up, but only uses it for audio data).
set -euo pipefail

HOME_DIR="${MI_LLM_HOME:-$HOME/.cache/mi-llm}"
VENV="${LF_VENV:-$HOME_DIR/bench/lf-venv}"
LF_VERSION="${LF_VERSION:-0.9.5}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/llamafactory-cli" ] && [ -f "$VENV/.mi-llm-ready" ]; then
  echo "LLaMA-Factory already set up in $VENV"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The same CPU torch as ours (named exactly, so pip does not pull a CUDA build).
"$VENV/bin/pip" install -q torch==2.13.0 "llamafactory==$LF_VERSION"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio >/dev/null 2>&1 || true
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$SITE/torchaudio"
cat > "$SITE/torchaudio/__init__.py" <<'PY'
"""Empty stand-in: PyPI's torchaudio does not load beside torch 2.13.0 on CPU, and
LLaMA-Factory imports it at start-up but only uses it for audio data."""
__version__ = "0.0.0"
PY
"$VENV/bin/python" -c "import llamafactory, transformers, peft; print('llamafactory', llamafactory.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
touch "$VENV/.mi-llm-ready"
echo "LLaMA-Factory ready in $VENV"
