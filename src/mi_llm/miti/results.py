"""miti.json: the one schema of MITI scores, and the one function that codes and scores.

`code_and_score` codes each system's sessions with an automatic coder (or takes the codes
they carry) and scores them: per session, per system (statistics over sessions and pooled
ratios) and side by side. `mi-llm miti score`, the pipeline's miti stage and
`transcribe --code` all call it and write what it returns with `write_miti_scores`; the
report reads it back with `read_miti_scores`, which checks the schema and its version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from mi_llm.corpus.schema import Dialogue, write_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import describe_validation_error, write_json
from mi_llm.miti.aggregate import ComparisonTable, aggregate, comparison_table, pooled
from mi_llm.miti.codebook import THRESHOLDS
from mi_llm.miti.scoring import DEFAULT_RATIO, ClientTalk, RatioDefinition, SessionScores, score_session
from mi_llm.miti.session import CodedSession

# 1: before one schema (the pipeline, `miti score` and `transcribe --code` each wrote their
# own shape, with no version field). Bump it when the schema changes: the pipeline's miti
# stage has it in its fingerprint, so a run reruns the stage and rewrites the file.
MITI_SCORES_VERSION: Literal[2] = 2

# Scores whose undefined sessions are worth a note, and why they are undefined.
_UNDEFINED_WHY = (
    ("pct_cr", "no reflection"),
    ("r_q", "no question"),
    ("mi_adherent_ratio", "no adherent or non-adherent code"),
    ("technical", "no global ratings"),
)


class DialogueCoder(Protocol):
    def code_dialogues(self, dialogues: Sequence[Dialogue]) -> Sequence[Dialogue]: ...


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RatioInfo(_Schema):
    """The MI-adherent ratio definition every session was scored under."""

    definition: str
    formula: str
    adherent: list[str]
    non_adherent: list[str]


class Threshold(_Schema):
    fair: float
    good: float


class ScoreStats(_Schema):
    """One score over a system's sessions (mi_llm.miti.aggregate.describe)."""

    n: int
    missing: int
    mean: float | None
    sd: float | None
    median: float | None
    q1: float | None
    q3: float | None
    iqr: float | None
    min: float | None
    max: float | None
    level: str | None = Field(None, description="only for scores with a threshold: the level of the mean")

    @model_serializer(mode="wrap")
    def _as_given(self, handler: Any) -> dict[str, Any]:
        # `level` is written only for the scores that have one, as aggregate() gives it
        return {k: v for k, v in handler(self).items() if k != "level" or "level" in self.model_fields_set}


class PooledScores(_Schema):
    """Ratios of the counts summed over a system's sessions (mi_llm.miti.aggregate.pooled)."""

    sessions: int
    volleys: int
    utterances: int
    counts: dict[str, int]
    pct_cr: float | None
    r_q: float | None
    mi_adherent_ratio: float | None
    ratio_adherent: int
    ratio_non_adherent: int
    client_talk: ClientTalk | None = None  # client turns by talk type, when they carry one


class SystemScores(_Schema):
    files: list[str] = Field(description="the coded sessions the scores come from")
    n_sessions: int
    aggregate: dict[str, ScoreStats]
    pooled: PooledScores
    sessions: list[SessionScores]


class MitiScores(_Schema):
    """miti.json."""

    schema_version: Literal[2] = MITI_SCORES_VERSION
    miti_version: Literal["4.2.1"] = "4.2.1"
    coder: str | None = Field(description="the automatic coder that coded the sessions; null: their own codes")
    mi_adherent_ratio: RatioInfo
    thresholds: dict[str, Threshold]
    systems: dict[str, SystemScores]
    comparison: dict[str, Any] = Field(description="mi_llm.miti.aggregate.ComparisonTable.to_dict()")
    notes: list[str]

    def comparison_table(self, paper: bool = True) -> ComparisonTable:
        return comparison_table({label: s.sessions for label, s in self.systems.items()}, paper=paper)


def code_and_score(
    systems: Mapping[str, Sequence[Dialogue | CodedSession]],
    coder: DialogueCoder | None = None,
    *,
    coder_name: str | None = None,
    keep_codes: Collection[str] = (),
    clients_not_answering: Collection[str] = (),
    ratio: RatioDefinition = DEFAULT_RATIO,
    files: Mapping[str, Sequence[str]] | None = None,
    coded_file: Callable[[str], Path] | None = None,
    paper: bool = True,
) -> MitiScores:
    """Code every system's sessions with `coder` and score them, in the order given.

    Without a coder, and for the systems named in `keep_codes`, the sessions are scored
    with the codes they carry. The client turns of the systems named in `clients_not_answering`
    get no talk type: a model's replies placed in a real dialogue's rounds were never heard by
    its client, so the client's change talk says nothing about that model (coding it with the
    model's reply as context only made the same words look different per system).
    `coded_file(label)` is where a system's coded sessions are written (and what its `files`
    say); else `files[label]` names its inputs.
    """
    from mi_llm.miti.coders.globals_model import WITHHELD_FROM_REPORTS

    scored: dict[str, list[SessionScores]] = {}
    sources: dict[str, list[str]] = {}
    for label, sessions in systems.items():
        coded: Sequence[Dialogue | CodedSession] = sessions
        if coder is not None and label not in keep_codes:
            if label in clients_not_answering:
                coded = _coded_without_client_talk(coder, sessions)  # type: ignore[arg-type]
            else:
                coded = list(coder.code_dialogues(sessions))  # type: ignore[arg-type]
            if len(coded) != len(sessions):
                raise MiLlmError(f"the MITI coder returned {len(coded)} dialogues for {len(sessions)} ({label})")
            # automatic global ratings are not valid (WITHHELD_FROM_REPORTS): only human ones are scored
            coded = [d.model_copy(update={"miti_globals": None}) if isinstance(d, Dialogue) else d for d in coded]
        if coded_file is not None:
            path = coded_file(label)
            write_dialogues(path, coded)  # type: ignore[arg-type]
            sources[label] = [str(path)]
        else:
            sources[label] = list((files or {}).get(label, ()))
        scored[label] = [score_session(s, ratio) for s in coded]
    aggregates = {label: aggregate(scores) for label, scores in scored.items()}
    notes = []
    if coder is not None:  # what the coder's figures are worth, beside them
        name = getattr(coder, "name", coder_name)
        notes.append(f"coder {name}: {getattr(coder, 'validity', None) or 'validity not measured'}")
        notes.append(WITHHELD_FROM_REPORTS)
    for label, scores in scored.items():
        agg = aggregates[label]
        for key, why in _UNDEFINED_WHY:
            if agg[key]["missing"]:
                notes.append(
                    f"{label}: {key} undefined in {agg[key]['missing']} of {len(scores)} session(s) "
                    f"({why}); left out of its statistics"
                )
    return MitiScores(
        coder=coder_name if coder is not None else None,
        mi_adherent_ratio=RatioInfo(
            definition=ratio.name,
            formula=ratio.describe(),
            adherent=list(ratio.adherent),
            non_adherent=list(ratio.non_adherent),
        ),
        thresholds={k: Threshold(fair=f, good=g) for k, (f, g) in THRESHOLDS.items()},
        systems={
            label: SystemScores(
                files=sources[label],
                n_sessions=len(scores),
                aggregate=aggregates[label],
                pooled=pooled(scores),
                sessions=scores,
            )
            for label, scores in scored.items()
        },
        comparison=comparison_table(scored, paper=paper).to_dict(),
        notes=notes,
    )


def _coded_without_client_talk(coder: DialogueCoder, sessions: Sequence[Dialogue]) -> list[Dialogue]:
    """The counselor turns coded, no client turn with a talk type (mi-llm's coders skip the
    client-talk coder; any other coder's talk types are dropped)."""
    from mi_llm.miti.coders.base import Coder

    if isinstance(coder, Coder):
        coded = coder.code_dialogues(list(sessions), client_talk=None)
    else:
        coded = list(coder.code_dialogues(sessions))
    return [
        d.model_copy(update={"turns": [t.model_copy(update={"talk": None}) if t.talk else t for t in d.turns]})
        for d in coded
    ]


def write_miti_scores(path: str | Path, scores: MitiScores) -> None:
    write_json(path, scores.model_dump(mode="json"))


def read_miti_scores(path: str | Path) -> MitiScores:
    """miti.json, checked; a file from before this schema says to re-run the miti stage."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MiLlmError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not JSON: {e.msg}", e.lineno) from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    version = obj.get("schema_version") if isinstance(obj, dict) else None
    if version != MITI_SCORES_VERSION:
        was = "no schema_version" if version is None else f"schema_version {version!r}"
        raise InputError(
            path,
            f"MITI scores in an older format ({was}; this mi-llm reads {MITI_SCORES_VERSION}): "
            "re-run the miti stage (`mi-llm run CONFIG` reruns it) or `mi-llm miti score`",
        )
    try:
        return MitiScores.model_validate(obj)
    except ValidationError as e:
        raise InputError(path, f"not MITI scores: {describe_validation_error(e)}") from None
