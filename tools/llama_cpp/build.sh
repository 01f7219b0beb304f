#!/usr/bin/env bash
# Build llama-cpp-python for every x86-64 CPU and install it into a venv (called by `make venv`).
#
#   tools/llama_cpp/build.sh PYTHON VERSION
#
# Why not `pip install llama-cpp-python`: that compiles with -march=native, so the build depends
# on the build machine's CPU, and on CPUs with AMX it segfaults in llama_decode (see
# cpu_variants.cmake). Here ggml is built with runtime CPU dispatch (GGML_NATIVE=OFF, one CPU
# backend library per x86-64 level, the AMX one left out); mi_llm.llm.llamacpp_runtime loads the
# best level for the CPU it runs on.
#
# The wheel is built with pip's cache off (a wheel built earlier with other flags, sitting in
# pip's cache under the same name and version, must not be reused) and kept in our own cache,
# keyed by the version and everything that decides the build: $MI_LLM_HOME/wheels/<key>/.
set -euo pipefail
PY=${1:?usage: build.sh PYTHON VERSION}
VERSION=${2:?usage: build.sh PYTHON VERSION}
HERE=$(cd "$(dirname "$0")" && pwd)

# Flags that decide the build. x86-64 only: elsewhere (ARM, ...) llama.cpp's own build is used.
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF"
if [ "$(uname -m)" != x86_64 ]; then FLAGS="-DGGML_NATIVE=OFF"; fi
# The key: what decides the wheel (comments left out, so editing one does not force a rebuild).
KEY=$( { echo "$VERSION $FLAGS $(uname -m)"; grep -hv '^[[:space:]]*#' "$HERE/cpu_variants.cmake" "$HERE/strip_wheel.py"; } | sha256sum | cut -c1-16)
HOME_DIR=${MI_LLM_HOME:-$HOME/.cache/mi-llm}
WHEELS="$HOME_DIR/wheels/llama-cpp-python-$VERSION-$KEY"

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MARKER="$SITE/llama_cpp/lib/mi-llm-build.json"
if [ -f "$MARKER" ] && grep -q "\"$KEY\"" "$MARKER"; then
  exit 0  # this exact build is installed
fi

if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION with runtime CPU dispatch (once per machine and version: 8-25 minutes on 2 cores)"
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/llama-cpp-build.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  # --no-binary names only llama-cpp-python: `:all:` would also build its build dependencies
  # (cmake included) from source in the isolated build environment on a machine with no pip cache.
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$TMP/sdist"
  CMAKE_ARGS="$FLAGS -DCMAKE_PROJECT_INCLUDE=$HERE/cpu_variants.cmake" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$TMP/built" "$TMP"/sdist/llama_cpp_python-"$VERSION".tar.gz
  mkdir -p "$TMP/wheel"
  "$PY" "$HERE/strip_wheel.py" "$TMP"/built/llama_cpp_python-"$VERSION"-*.whl "$TMP/wheel"
  mkdir -p "$(dirname "$WHEELS")"
  rm -rf "$WHEELS.tmp" && mv "$TMP/wheel" "$WHEELS.tmp" && rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
fi

"$PY" -m pip install -q --no-deps --force-reinstall --no-index "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl
printf '{"key": "%s", "version": "%s", "flags": "%s"}\n' "$KEY" "$VERSION" "$FLAGS" > "$MARKER"
