"""`make bench`: every benchmark, one after another (each compares side by side in one run).

Each script prints its own table; the figures go into the docs named in its docstring.
The training benchmark needs LLaMA-Factory's own venv (benchmarks/setup_llamafactory.sh).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_metrics.py",
    "bench_predict.py",
    "bench_train.py",
    "bench_coder.py",
    "bench_serve_load.py",
    "bench_demo.py",
    "bench_simulate.py",
]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
