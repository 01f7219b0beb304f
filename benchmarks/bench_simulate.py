"""Benchmark `mi-llm simulate`: sessions per hour on the embedded model, one stream vs batched.

Both contenders are the llama.cpp backend on the embedded gemma-3-270m GGUF, playing the
counselor and the (toy) client, with the same settings, personas and seed:

  one stream   parallel = 1: the sessions of a round are decoded one after another
  batched xN   parallel = N: the sessions of a round are decoded together (continuous
               batching in one llama.cpp context, shared prompt prefixes)

The runner is the same for both (every active session's next turn in one generate call,
the MITI coder coding the round's replies together); only the engine differs. Time is the
wall time of `simulate.runner.simulate` (models loaded before, coding of the counselor's
replies by the state machine's MITI coder included; outcomes and fidelity not). The
contenders take turns (`--repeats`, order alternating), so a change of load on the shared
machine hits them alike. Tokens: client and counselor completions counted by the backend.

    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_simulate.py
    [--sessions 4] [--max-rounds 2] [--max-tokens 32] [--repeats 2]

Docs: docs/simulate.md ("Speed").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages  # noqa: E402


class Counting(Backend):
    """Counts the completion tokens of the wrapped backend."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.tokens = 0

    def generate(self, batch: list[Messages], config: GenerationConfig) -> list[Completion]:  # type: ignore[override]
        out = self.inner.generate(batch, config)
        self.tokens += sum(c.completion_tokens for c in out)
        return out

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def main() -> int:
    ap = argparse.ArgumentParser(description="sessions/hour: one stream vs batched llama.cpp")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--max-rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32, help="new tokens per turn, both sides")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--personas", default="demo:en")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.resolve import DEFAULT_MODEL
    from mi_llm.miti.coders import load_coder
    from mi_llm.simulate.cards import load_personas
    from mi_llm.simulate.config import SimulateConfig
    from mi_llm.simulate.runner import simulate

    cfg = SimulateConfig(
        sessions=args.sessions,
        max_rounds=args.max_rounds,
        counselor_max_tokens=args.max_tokens,
        client_max_tokens=args.max_tokens,
        personas=args.personas,
        counselor_backend="llamacpp",
        client_backend="llamacpp",
    )
    personas = load_personas(cfg.personas)
    coder = load_coder(cfg.coder)
    engines = {
        "one stream": get_backend("llamacpp", DEFAULT_MODEL, parallel=1, seed=cfg.seed),
        f"batched x{args.sessions}": get_backend("llamacpp", DEFAULT_MODEL, parallel=args.sessions, seed=cfg.seed),
    }
    # warm-up: the coder's lazily loaded parts and each engine's first decode are not timed
    coder.code_volleys([("I smoke.", ["You smoke."], "en")])
    for e in engines.values():
        e.generate([[{"role": "user", "content": "Hello"}]], GenerationConfig(max_new_tokens=2))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    names = list(engines)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                backend = Counting(engines[name])
                out = Path(tmp) / f"{r}-{name.replace(' ', '_')}"
                t0 = time.monotonic()
                res = simulate(cfg, personas, backend, backend, coder, out)
                seconds = time.monotonic() - t0
                rounds = sum(json.loads(line)["meta"]["rounds"] for line in res.output.read_text().splitlines())
                runs[name].append(
                    {"seconds": seconds, "sessions": res.written_now, "rounds": rounds, "tokens": backend.tokens}
                )
                print(
                    f"repeat {r + 1} {name:12s} {seconds:7.1f} s  {res.written_now} sessions, {rounds} rounds, "
                    f"{backend.tokens} tokens",
                    flush=True,
                )
    for e in engines.values():
        e.close()
    print(
        f"\n{args.sessions} sessions x up to {args.max_rounds} rounds, {args.max_tokens} new tokens a turn, "
        f"embedded model as counselor and client; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"shared machine; {args.repeats} repeats, interleaved"
    )
    print(f"{'engine':14s} {'sessions/hour':>14s} {'rounds/hour':>12s} {'tokens/s':>9s}  (median of repeats)")
    table = {}
    for name, rs in runs.items():
        per_hour = statistics.median(x["sessions"] / x["seconds"] * 3600 for x in rs)
        rounds_hour = statistics.median(x["rounds"] / x["seconds"] * 3600 for x in rs)
        tps = statistics.median(x["tokens"] / x["seconds"] for x in rs)
        table[name] = {"sessions_per_hour": per_hour, "rounds_per_hour": rounds_hour, "tokens_per_s": tps, "runs": rs}
        print(f"{name:14s} {per_hour:14.1f} {rounds_hour:12.1f} {tps:9.2f}")
    one, batched = (table[n]["sessions_per_hour"] for n in names)
    print(f"batched / one stream: {batched / one:.2f}x sessions per hour")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None}, "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
