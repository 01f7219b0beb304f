#!/usr/bin/env bash
# Regenerate constraints.txt (`make lock`): resolve pyproject.toml's dependencies, with the test
# extra, as pip would on a fresh machine today, and pin every package at the version chosen.
# `make venv` installs with `-c constraints.txt`, so every machine gets what was tested.
# Review the diff, run `make test`, commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mi-llm-lock.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --upgrade pip
# --dry-run resolves and reads metadata without building or installing anything.
"$TMP/venv/bin/python" -m pip install -q --dry-run --ignore-installed --report "$TMP/report.json" \
  torch==2.13.0 -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
"$TMP/venv/bin/python" - "$TMP/report.json" > constraints.txt.tmp <<'PY'
import json, sys
from importlib.metadata import version
report = json.load(open(sys.argv[1]))
pins = {"pip": version("pip")}
for item in report["install"]:
    meta = item["metadata"]
    if meta["name"].lower() != "mi-llm":
        pins[meta["name"].lower()] = meta["version"]
print("# Pinned versions for `make venv` (pip install -c constraints.txt). Regenerate: `make lock`.")
print(f"# Resolved by pip for Python {sys.version_info.major}.{sys.version_info.minor} on linux x86_64.")
for name in sorted(pins):
    print(f"{name}=={pins[name].split('+')[0] if name == 'torch' else pins[name]}")
PY
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
