"""Does the harness separate a good counselor from a poor one? Three counselors on the same
planned sessions (same personas, seeds and toy client):

  reflective        scripted: reflections and autonomy support (mi_llm.simulate.scripted)
  confrontational   scripted: persuasion without permission, confrontation
  base model        the embedded gemma-3-270m through llama.cpp (no MI training)

The client is the embedded model too (a toy client: honestly, it shows whether the
machinery separates, not how a real client would react). Per counselor: success rate,
drop-outs, stage progress, final receptivity, change-talk share (the shipped client-talk
coder), each with a 95% bootstrap CI over sessions, and every pair's difference, paired by
session (mi_llm.simulate.separation.compare). The reflective counselor's texts are also the
check of the MITI coder: the state machine moves on its codes.

    .venv/bin/python benchmarks/bench_simulate_separation.py [--sessions 8] [--max-rounds 6]
        [--max-tokens 48] [--personas demo] [-o DIR]

Docs: docs/simulate.md ("Separation").
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _fmt(ci: tuple[float, float, float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description="separation of good and poor counselors on the toy client")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--max-rounds", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=48, help="new tokens per turn, both sides")
    ap.add_argument("--personas", default="demo")
    ap.add_argument("-o", "--output", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()

    from mi_llm.corpus.schema import read_dialogues
    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.resolve import DEFAULT_MODEL
    from mi_llm.miti.coders import load_coder
    from mi_llm.miti.coders.client_talk import load_client_coder
    from mi_llm.simulate.cards import load_personas
    from mi_llm.simulate.config import SimulateConfig
    from mi_llm.simulate.outcomes import write_outcomes
    from mi_llm.simulate.runner import simulate
    from mi_llm.simulate.scripted import ScriptedCounselor
    from mi_llm.simulate.separation import METRICS, compare

    cfg = SimulateConfig(
        sessions=args.sessions,
        max_rounds=args.max_rounds,
        counselor_max_tokens=args.max_tokens,
        client_max_tokens=args.max_tokens,
        personas=args.personas,
    )
    personas = load_personas(cfg.personas)
    coder, client_coder = load_coder(cfg.coder), load_client_coder(cfg.client_coder)
    model = get_backend("llamacpp", DEFAULT_MODEL, parallel=min(8, args.sessions), seed=cfg.seed)
    counselors = {
        "reflective": ScriptedCounselor("reflective"),
        "confrontational": ScriptedCounselor("confrontational"),
        "base model": model,
    }
    outcomes = {}
    root = args.output or Path(tempfile.mkdtemp(prefix="mi-llm-separation-"))
    for name, counselor in counselors.items():
        out = root / name.replace(" ", "_")
        t0 = time.monotonic()
        simulate(cfg, personas, counselor, model, coder, out)
        sessions = read_dialogues(out / "sessions.jsonl")
        report = write_outcomes(out / "outcomes.json", sessions, coder, client_coder)
        outcomes[name] = report["sessions"]
        print(f"{name}: {len(sessions)} sessions in {time.monotonic() - t0:.0f} s", flush=True)
    model.close()

    print(
        f"\n{args.sessions} sessions ({args.personas}), up to {args.max_rounds} rounds, "
        f"{args.max_tokens} tokens a turn, toy client = embedded model; mean [95% bootstrap CI]"
    )
    names = list(counselors)
    print(f"{'metric':18s}" + "".join(f"{n:>28s}" for n in names))
    result: dict[str, object] = {"settings": {k: str(v) for k, v in vars(args).items()}, "pairs": {}}
    pairs = {f"{a} - {b}": compare(outcomes[a], outcomes[b]) for a, b in itertools.combinations(names, 2)}
    first = next(iter(pairs.values()))
    for metric in METRICS:
        means = [first[metric]["good"], first[metric]["poor"], pairs["reflective - base model"][metric]["poor"]]
        print(f"{metric:18s}" + "".join(f"{_fmt(m):>28s}" for m in means))
    print()
    for pair, rows in pairs.items():
        print(f"difference {pair} (paired by session; * = CI excludes 0 in the first's favour)")
        for metric, row in rows.items():
            print(f"  {metric:18s} {_fmt(row['diff']):>28s} {'*' if row['separates'] else ''}")
        result["pairs"][pair] = rows  # type: ignore[index]
    end_reasons = {
        n: {r: sum(o["end_reason"] == r for o in os_) for r in ("plan", "dropout", "max_rounds")}
        for n, os_ in outcomes.items()
    }
    print("end reasons:", json.dumps(end_reasons))
    result["end_reasons"] = end_reasons
    (root / "separation.json").write_text(json.dumps(result, indent=2))
    print(f"runs and separation.json in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
