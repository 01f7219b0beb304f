"""Build the real-client reference of the simulator fidelity check (mi_llm/resources/fidelity/reference.json).

    python benchmarks/fidelity_reference.py [--data ../shared/data] [--max-client-turns 400] [--seed 0]

Lengths and rounds over every dialogue of AnnoMI, MIBot and CPsyCounD; change / sustain /
neutral shares over a random sample of whole dialogues (about --max-client-turns client
turns a corpus), coded by the shipped client-talk coder (the one `mi-llm simulate` codes
simulated clients with). AnnoMI's expert labels of the same sample are kept beside the
coder's, to show the coder's own bias. Docs: docs/simulate.md ("Simulator fidelity").
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from mi_llm.io import write_json
from mi_llm.simulate.fidelity import TALK, reference_file, reference_profiles, sample_dialogues

ROOT = Path(__file__).resolve().parents[1]


def annomi_expert_shares(data: Path, max_client_turns: int, seed: int) -> dict[str, float]:
    """The experts' talk types (majority of annotators) of the sampled AnnoMI dialogues."""
    from mi_llm.corpus.importers import import_corpus

    dialogues, _ = import_corpus("annomi", data / "annomi")
    counts: Counter[str] = Counter()
    for d in sample_dialogues(dialogues, max_client_turns, seed):
        for t in d.turns:
            if t.role != "client":
                continue
            for u in t.meta.get("utterances", []):
                votes = Counter(
                    a.get("client_talk_type") for a in u.get("annotations", []) if a.get("client_talk_type")
                )
                if votes:
                    top = votes.most_common()
                    if len(top) == 1 or top[0][1] > top[1][1]:
                        counts[top[0][0]] += 1
    n = sum(counts.values())
    return {k: round(counts[k] / n, 4) for k in TALK}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--max-client-turns", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=reference_file())
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: no data folder (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    from mi_llm.miti.coders.client_talk import load_client_coder

    coder = load_client_coder("default")
    t0 = time.monotonic()
    corpora = reference_profiles(args.data, coder, args.max_client_turns, args.seed)
    corpora["annomi"]["talk"]["expert_shares"] = annomi_expert_shares(args.data, args.max_client_turns, args.seed)
    reference = {
        "version": 1,
        "built_by": "benchmarks/fidelity_reference.py",
        "built": time.strftime("%Y-%m-%d"),
        "client_talk_coder": coder.name,
        "max_client_turns": args.max_client_turns,
        "seed": args.seed,
        "seconds": round(time.monotonic() - t0, 1),
        "corpora": corpora,
    }
    write_json(args.output, reference)
    for name, c in corpora.items():
        print(
            f"{name:10s} {c['language']} dialogues {c['dialogues']:5d} client turns {c['client_turns']:6d} "
            f"median {c['length']['median']} {c['length_unit']}  talk {c['talk']['shares']} "
            f"change->sustain {c['talk']['change_then_sustain']}  rounds median {c['rounds']['median']}"
        )
    print(f"wrote {args.output} in {reference['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
