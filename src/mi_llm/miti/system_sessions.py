"""Sessions for MITI coding: the test dialogues with each round's counselor reply taken
from a system's predictions (the paper coded model replies in their dialogue context).
Only dialogues whose every round was predicted become sessions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError
from mi_llm.io import describe_validation_error, iter_jsonl


class RoundPrediction(BaseModel):
    """The fields of a `mi-llm predict` line that place its reply in a test dialogue; the
    others (reference, generation, ...) are evaluate's business and are not checked here."""

    # strict: `predict` writes a string id and an integer round, so a round of "2", 2.5 or
    # true is a broken file, not something to coerce into another dialogue's round
    model_config = ConfigDict(extra="ignore", strict=True)
    dialogue_id: str
    round: int = Field(ge=1)
    prediction: str


def read_predictions_by_round(path: str | Path) -> dict[tuple[str, int], str]:
    """{(dialogue id, round): predicted reply}; a bad or repeated line is an InputError at its line."""
    out: dict[tuple[str, int], str] = {}
    first_line: dict[tuple[str, int], int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            rec = RoundPrediction.model_validate(obj)
        except ValidationError as e:
            raise InputError(path, describe_validation_error(e), lineno) from None
        key = (rec.dialogue_id, rec.round)
        if key in first_line:  # two replies for one round: which one was coded would be arbitrary
            raise InputError(
                path, f"round {rec.round} of dialogue {rec.dialogue_id!r} repeats line {first_line[key]}", lineno
            )
        first_line[key] = lineno
        out[key] = rec.prediction
    return out


def system_sessions(
    dialogues: Sequence[Dialogue], predictions: dict[tuple[str, int], str], system: str
) -> list[Dialogue]:
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
        out.append(
            d.model_copy(
                update={"turns": turns, "miti_globals": None, "style": "mi", "meta": {**d.meta, "system": system}}
            )
        )
    return out
