"""The canonical dialogue: every importer produces it, every later stage reads it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mi_llm.io import read_models, write_jsonl

# The 10 MITI 4.2.1 behaviour codes an utterance can carry; `None` in data means "not
# coded". Defined here, with the data that carries them, so that the corpus layer needs
# nothing above it; mi_llm.miti.codebook re-exports it with the rest of the codebook.
Code = Literal["GI", "Persuade", "PwP", "Q", "SR", "CR", "AF", "Seek", "EA", "Confront"]
Role = Literal["client", "counselor"]
# MISC client talk: toward change, against it (sustain), or neither.
TalkType = Literal["change", "sustain", "neutral"]
Language = Literal["zh", "en"]
Style = Literal["raw", "mi"]

_SPACE = re.compile(r"\s+")


class Utterance(BaseModel):
    """One complete thought inside a counselor turn, with its MITI behaviour code."""

    model_config = ConfigDict(extra="forbid")
    text: str
    code: Code | None = None


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    text: str
    # MITI coding of a counselor turn: its utterances in order, each with a code.
    codes: list[Utterance] | None = None
    # Talk type of a client turn (mi_llm.miti.coders.client_talk, or a person).
    talk: TalkType | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _codes_cover_text(self) -> Turn:
        if self.talk is not None and self.role != "client":
            raise ValueError("only client turns carry a talk type")
        if self.codes is None:
            return self
        if self.role != "counselor":
            raise ValueError("only counselor turns carry MITI codes")
        joined = _SPACE.sub("", "".join(u.text for u in self.codes))
        if joined != _SPACE.sub("", self.text):
            raise ValueError("the coded utterances do not add up to the turn's text")
        return self


class GlobalRatings(BaseModel):
    """MITI 4.2.1 global ratings, each 1-5."""

    model_config = ConfigDict(extra="forbid")
    cct: int = Field(ge=1, le=5, description="Cultivating Change Talk")
    sst: int = Field(ge=1, le=5, description="Softening Sustain Talk")
    partnership: int = Field(ge=1, le=5)
    empathy: int = Field(ge=1, le=5)


class Dialogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    language: Language
    topic: str | None = None
    style: Style = "raw"
    turns: list[Turn]
    miti_globals: GlobalRatings | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("turns")
    @classmethod
    def _not_empty(cls, turns: list[Turn]) -> list[Turn]:
        if not turns:
            raise ValueError("a dialogue needs at least one turn")
        return turns

    def rounds(self) -> list[tuple[Turn, Turn]]:
        """(client turn, counselor reply) pairs: a counselor turn that answers a client turn.

        Counselor turns with no client turn before them (an opening greeting) and a
        trailing client turn with no reply make no round.
        """
        return [
            (prev, turn)
            for prev, turn in zip(self.turns, self.turns[1:])
            if prev.role == "client" and turn.role == "counselor"
        ]


def read_dialogues(path: str | Path) -> list[Dialogue]:
    """Read a dialogues JSONL file; a bad line or a repeated id raises FILE:LINE errors."""
    return read_models(path, Dialogue, key=lambda d: d.id, what="dialogue id")


def write_dialogues(path: str | Path, dialogues: Iterable[Dialogue]) -> int:
    return write_jsonl(path, dialogues)
