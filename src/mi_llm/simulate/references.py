"""Reference rows shown beside a counselor's simulated-session aggregates.

Two kinds, never mixed up:
- published: CAMI's figures (Yang et al., "CAMI: A Counselor Agent Supporting Motivational
  Interviewing through State Inference and Topic Exploration", 2025) on 190 simulated
  clients, and the AnnoMI high-quality counselors as CAMI reports them; as quoted in issue 18.
  CAMI's %MIC (MI-consistent) is set beside our MI-adherent ratio: related, not the same
  definition.
- computed here: AnnoMI's high- and low-quality transcripts (../shared/data/annomi, 106 of the
  133 transcripts) scored with their human codes: each therapist utterance's majority code
  mapped onto MITI 4.2.1 (mi_llm.miti.coders.labels: question -> Q, reflection simple/complex
  -> SR/CR, information -> GI, advice -> Persuade, options -> PwP, negotiation -> Seek; a tie
  or an unmappable label counts as not coded), each client utterance's majority talk type;
  every utterance is its own turn. Means over transcripts with the same bootstrap interval as
  the simulated sessions (simulate.aggregate). Shipped in resources/references/annomi.json;
  rebuilt by `python -m mi_llm.simulate.references ../shared/data/annomi`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue, Turn, Utterance
from mi_llm.io import write_json
from mi_llm.simulate.aggregate import CI_METHOD, mean_ci

ANNOMI_REFERENCE_FILE = "annomi.json"
# no MI-adherent ratio: AnnoMI codes no affirm or autonomy, so MIA would be Seek alone
ANNOMI_KEYS = ("r_q", "pct_cr", "change_share")
TALK_TYPES = ("change", "sustain", "neutral")

CAMI_SOURCE = (
    "Yang et al. 2025, CAMI: A Counselor Agent Supporting Motivational Interviewing through State "
    "Inference and Topic Exploration (figures as quoted in issue 18)"
)
# label -> {outcome key: figure as published (text: a range stays a range)}
PUBLISHED: dict[str, dict[str, str]] = {
    "CAMI, 190 simulated clients (published)": {
        "r_q": "0.56",
        "pct_cr": "0.573",
        "mi_adherent_ratio": "0.966 (%MIC)",
        "success": "0.652",
    },
    "CAMI's baseline counselors (published)": {"success": "0.315-0.384"},
    "AnnoMI high-quality counselors (published by CAMI)": {"r_q": "1.28", "pct_cr": "0.514"},
}


def _majority(votes: list[Any]) -> Any:
    counts = Counter(votes).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def human_coded(dialogue: Dialogue) -> Dialogue:
    """An imported AnnoMI transcript with its annotators' majority codes and talk types."""
    from mi_llm.miti.coders.labels import annomi_code, majority

    turns = []
    for t in dialogue.turns:
        [utt] = t.meta["utterances"]  # the importer gives one utterance per turn
        text = utt["text"]
        if not text.strip():
            continue
        if t.role == "counselor":
            votes = [
                annomi_code(
                    a.get("main_therapist_behaviour", ""), a.get("reflection_subtype"), a.get("therapist_input_subtype")
                )
                for a in utt["annotations"]
            ]
            code = majority(votes)  # a tie or no usable label: a sentinel object, not coded here
            turns.append(
                Turn(
                    role="counselor",
                    text=text,
                    codes=[Utterance(text=text, code=code if isinstance(code, str) else None)],
                )
            )
        else:
            talk = _majority([a["client_talk_type"] for a in utt["annotations"] if a.get("client_talk_type")])
            turns.append(Turn(role="client", text=text, talk=talk if talk in TALK_TYPES else None))
    return dialogue.model_copy(update={"turns": turns})


def annomi_reference(path: str | Path) -> dict[str, Any]:
    """AnnoMI's high- and low-quality rows from the CSV (a file or the folder holding it)."""
    from mi_llm.corpus.importers.annomi import _pick_file, parse_csv
    from mi_llm.miti.scoring import score_session

    csv_file = _pick_file(Path(path))
    groups: dict[str, list[Any]] = {"high": [], "low": []}
    for d in parse_csv(csv_file):
        coded = human_coded(d)
        if any(t.role == "counselor" for t in coded.turns):
            groups[d.meta["mi_quality"]].append(score_session(coded))
    rows = {}
    for quality, scores in groups.items():
        row: dict[str, Any] = {"transcripts": len(scores)}
        for key in ANNOMI_KEYS:
            row[key] = mean_ci([s.value(key) for s in scores])
        rows[quality] = row
    return {
        "source": f"AnnoMI ({csv_file.name}, {sum(len(g) for g in groups.values())} transcripts), human codes",
        "ci_method": CI_METHOD.replace("sessions", "transcripts"),
        "rows": rows,
    }


def shipped_annomi_reference() -> dict[str, Any]:
    root = resources.files("mi_llm.resources").joinpath("references")
    return dict(json.loads(root.joinpath(ANNOMI_REFERENCE_FILE).read_text(encoding="utf-8")))


def reference_rows(keys: Iterable[str]) -> list[dict[str, Any]]:
    """Rows for a table of `keys`: {label, kind (published | computed), cells: {key: text}}."""
    keys = list(keys)
    rows: list[dict[str, Any]] = [
        {"label": label, "kind": "published", "source": CAMI_SOURCE, "cells": {k: v for k, v in figures.items()}}
        for label, figures in PUBLISHED.items()
    ]
    annomi = shipped_annomi_reference()
    for quality, row in annomi["rows"].items():
        cells = {}
        for k in keys:
            stats = row.get(k)
            if stats and stats.get("mean") is not None:
                cells[k] = format_ci(stats)
        rows.append(
            {
                "label": f"AnnoMI {quality}-quality counselors ({row['transcripts']} transcripts, computed here)",
                "kind": "computed",
                "source": f"{annomi['source']}; {annomi['ci_method']}",
                "cells": cells,
            }
        )
    return rows


def format_ci(stats: dict[str, Any], digits: int = 2) -> str:
    """`mean [low, high]` (or the mean alone when there is no interval)."""
    if stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("ci_low") is not None:
        text += f" [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"
    return text


def main(argv: list[str]) -> None:
    """Rebuild resources/references/annomi.json from an AnnoMI folder or CSV."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m mi_llm.simulate.references ANNOMI_DIR_OR_CSV")
    out = Path(str(resources.files("mi_llm.resources").joinpath("references"))) / ANNOMI_REFERENCE_FILE
    write_json(out, annomi_reference(argv[0]))
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
