"""Sessions for MITI coding: the test dialogues with each round's counselor reply taken
from a system's predictions (the paper coded model replies in their dialogue context).
Only dialogues whose every round was predicted become sessions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.io import iter_jsonl


def read_predictions_by_round(path: Path) -> dict[tuple[str, int], str]:
    out = {}
    for _, rec in iter_jsonl(path):
        out[(str(rec["dialogue_id"]), int(rec["round"]))] = str(rec["prediction"])
    return out


def system_sessions(dialogues: Sequence[Dialogue], predictions: dict[tuple[str, int], str], system: str) -> list[Dialogue]:
    """Each dialogue with its answering counselor turns replaced by the predicted replies,
    uncoded; dialogues with no predicted round (e.g. cut by --limit) are left out."""
    out = []
    for d in dialogues:
        turns: list[Turn] = []
        rnd = 0
        replaced = 0
        for i, t in enumerate(d.turns):
            answers_client = t.role == "counselor" and i > 0 and d.turns[i - 1].role == "client"
            if answers_client:
                rnd += 1
                pred = predictions.get((d.id, rnd))
                if pred is not None:
                    replaced += 1
                    turns.append(Turn(role="counselor", text=pred.strip()))
                    continue
            turns.append(Turn(role=t.role, text=t.text))
        if replaced == 0 or replaced != rnd:  # not predicted, or only partly (cut by a limit)
            continue
        out.append(d.model_copy(update={"turns": turns, "miti_globals": None, "style": "mi",
                                        "meta": {**d.meta, "system": system}}))
    return out
