"""Persona cards: who a simulated client is, what they believe, and where they start.

A card file is JSONL, one card per line; a bad card is `FILE:LINE: what` (InputError, exit 2).
The bundled cards are mi_llm/resources/personas/{zh,en}.jsonl, written for this project;
`simulate.cards.load_personas` reads any of the sources `--personas` takes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_llm.errors import InputError
from mi_llm.io import read_models

Stage = Literal["precontemplation", "contemplation", "preparation"]
STAGES: tuple[Stage, ...] = ("precontemplation", "contemplation", "preparation")


def _texts(values: list[str]) -> list[str]:
    out = [" ".join(v.split()) for v in values]
    if any(not v for v in out):
        raise ValueError("an entry is empty")
    return out


class PersonaCard(BaseModel):
    """One simulated client."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    language: Literal["zh", "en"] = Field(description="the language the card is written in and the client speaks")
    behavior: str = Field(min_length=1, description="the target behaviour: smoking, alcohol, diet, exercise, ...")
    goal: str = Field(min_length=1, description="the change the counselor works toward")
    persona: list[str] = Field(min_length=1, description="who the client is and their life situation")
    beliefs: list[str] = Field(min_length=1, description="what the client believes about the behaviour")
    motivation: str = Field(min_length=1, description="what could move them; revealed only when earned")
    motivators: list[str] = Field(
        min_length=1, description="topics (words) that move them when the counselor touches them"
    )
    acceptable_plans: list[str] = Field(min_length=1, description="plans the client could agree to")
    stage: Stage = Field(description="stage of change at the start")
    receptivity: float = Field(ge=1, le=5, description="1 (closed) to 5 (open) at the start")
    source: str = Field("mi-llm", min_length=1, description="who wrote the card")

    @field_validator("persona", "beliefs", "motivators", "acceptable_plans")
    @classmethod
    def _no_empty_entries(cls, values: list[str]) -> list[str]:
        return _texts(values)


def bundled_persona_files(language: str | None = None) -> list[Path]:
    """The bundled card files, zh then en (or the one language)."""
    root = Path(str(resources.files("mi_llm.resources").joinpath("personas")))
    return [root / f"{lang}.jsonl" for lang in ([language] if language else ["zh", "en"])]


def read_cards(path: str | Path) -> list[PersonaCard]:
    """Every card of a JSONL file; a bad line or a repeated id is `FILE:LINE: what`."""
    cards = read_models(path, PersonaCard, key=lambda c: c.id, what="persona id")
    if not cards:
        raise InputError(path, "no persona cards")
    return cards


def parse_json_list(path: Path) -> list[tuple[int, object]]:
    """(line where it starts, item) of each item of a JSON file holding a list; a syntax error
    is located by line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        raise InputError(path, "expected a JSON list of profiles", text.count("\n", 0, pos) + 1)
    items: list[tuple[int, object]] = []
    pos = _skip_space(text, pos + 1)
    try:
        while not text.startswith("]", pos):
            line = text.count("\n", 0, pos) + 1
            item, pos = decoder.raw_decode(text, pos)
            items.append((line, item))
            pos = _skip_space(text, pos)
            if text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            elif not text.startswith("]", pos):
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except RecursionError:
        raise InputError(path, "nested too deeply") from None
    if text[pos + 1 :].strip():
        raise InputError(path, "invalid JSON: extra data after the list", text.count("\n", 0, pos) + 1)
    return items


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
