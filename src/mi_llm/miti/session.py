"""The coded session: a `Dialogue` whose counselor turns are volleys of coded utterances.

A coder (human, prompted LLM or trained model) produces an ordinary `Dialogue`: each
counselor turn gets `codes` (its utterances in order, each with one MITI code or null)
and the dialogue gets `miti_globals`. `CodedSession.from_dialogue` checks it and applies
the manual's counting units; `mi_llm.miti.scoring` turns it into scores.

Counting rules (MITI 4.2.1):
- a counselor turn is one volley (uninterrupted counselor speech);
- a code counts at most once per volley (two questions in one volley count one Q);
- at most one reflection per volley: CR if any reflection in it is complex, else SR.
Precedence rules (Affirm over Complex Reflection, Confront over Question, Persuade with
Permission over Persuade) act *within one utterance, at coding time*: a coder gives each
utterance exactly one code, so by the time a session is scored they have been applied.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mi_llm.corpus.schema import Dialogue, GlobalRatings, Turn, Utterance
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import describe_validation_error, iter_jsonl
from mi_llm.miti.codebook import CODE_NAMES, CODES, GLOBALS
from mi_llm.miti.segment import split_utterances

_ALIASES = {name.lower(): code for code, name in CODE_NAMES.items()} | {c.lower(): c for c in CODES}


def volley_codes(codes: Iterable[str | None]) -> frozenset[str]:
    """The codes a volley counts: each code once; SR dropped when the volley also has CR."""
    present = {c for c in codes if c is not None}
    if "CR" in present:
        present.discard("SR")
    return frozenset(present)


@dataclass(frozen=True)
class Volley:
    """One counselor turn: `turn_index` is its position in `Dialogue.turns`."""

    turn_index: int
    utterances: tuple[Utterance, ...]

    @property
    def codes(self) -> tuple[str | None, ...]:
        return tuple(u.code for u in self.utterances)

    def counted(self) -> frozenset[str]:
        return volley_codes(self.codes)


@dataclass(frozen=True)
class CodedSession:
    id: str
    language: str
    style: str
    source: str
    topic: str | None
    volleys: tuple[Volley, ...]
    globals: GlobalRatings | None
    # counselor turns that carried no `codes` (only with allow_uncoded=True)
    uncoded_volleys: int = 0
    # talk types of the client turns that carry one (Turn.talk), in order
    client_talk: tuple[str, ...] = ()

    @classmethod
    def from_dialogue(cls, dialogue: Dialogue, *, allow_uncoded: bool = False) -> CodedSession:
        """Check a coded dialogue; raises MiLlmError naming the session and turn."""
        volleys: list[Volley] = []
        uncoded = 0
        for i, turn in enumerate(dialogue.turns):
            if turn.role != "counselor":
                continue
            if turn.codes is None:
                if not allow_uncoded:
                    raise MiLlmError(
                        f"session {dialogue.id!r}: counselor turn {i + 1} is not coded (no `codes`); "
                        "code it first (mi-llm miti code / annotate) or pass --allow-uncoded"
                    )
                uncoded += 1
                volleys.append(Volley(i, (Utterance(text=turn.text, code=None),)))
                continue
            if not turn.codes:
                raise MiLlmError(f"session {dialogue.id!r}: counselor turn {i + 1} has an empty `codes` list")
            for j, u in enumerate(turn.codes):
                if not u.text.strip():
                    raise MiLlmError(f"session {dialogue.id!r}: counselor turn {i + 1}, utterance {j + 1} is blank")
            volleys.append(Volley(i, tuple(turn.codes)))
        if not volleys:
            raise MiLlmError(f"session {dialogue.id!r} is empty: it has no counselor turns to score")
        return cls(
            id=dialogue.id,
            language=dialogue.language,
            style=dialogue.style,
            source=dialogue.source,
            topic=dialogue.topic,
            volleys=tuple(volleys),
            globals=dialogue.miti_globals,
            uncoded_volleys=uncoded,
            client_talk=tuple(t.talk for t in dialogue.turns if t.talk),
        )

    @property
    def utterances(self) -> list[Utterance]:
        return [u for v in self.volleys for u in v.utterances]


def presplit_turn(turn: Turn, language: str) -> list[Utterance]:
    """A counselor turn's utterances: its coding if it has one, else sentence pieces coded null."""
    if turn.codes:
        return [Utterance(text=u.text, code=u.code) for u in turn.codes]
    return [Utterance(text=t, code=None) for t in split_utterances(turn.text, language)] or [
        Utterance(text=turn.text, code=None)
    ]


def with_coding(dialogue: Dialogue, codes: dict[int, list[Utterance]], globals: GlobalRatings | None) -> Dialogue:
    """A copy of `dialogue` with counselor turns coded (turn index -> utterances) and globals set.

    What a coder calls to produce its output; validation (utterances add up to the turn's
    text, only counselor turns coded) is the schema's.
    """
    turns = []
    for i, turn in enumerate(dialogue.turns):
        if i in codes:
            turn = Turn.model_validate({**turn.model_dump(), "codes": [u.model_dump() for u in codes[i]]})
        turns.append(turn)
    extra = set(codes) - set(range(len(dialogue.turns)))
    if extra:
        raise MiLlmError(f"session {dialogue.id!r} has no turn(s) {sorted(extra)}")
    return dialogue.model_copy(update={"turns": turns, "miti_globals": globals})


# --- reading coded files with clear, located errors -------------------------------------


def suggest_code(value: Any) -> str | None:
    """The code key a mistyped or spelled-out label probably meant ('question' -> 'Q')."""
    if not isinstance(value, str):
        return None
    key = value.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.75)
    return _ALIASES[close[0]] if close else None


def check_code(value: Any) -> str | None:
    """The error message for a value that is not a MITI code key or null, else None."""
    if value is None or value in CODES:
        return None
    hint = suggest_code(value)
    msg = f"unknown MITI code {value!r}; expected one of {', '.join(CODES)} or null"
    return msg + (f" (did you mean {hint!r}?)" if hint else "")


def check_rating(name: str, value: Any) -> str | None:
    """The error message for a global rating that is not an integer 1-5, else None."""
    if name not in GLOBALS:
        return f"unknown global rating {name!r}; expected {', '.join(GLOBALS)}"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        return f"global rating {name}={value!r} is outside 1-5 (MITI globals are whole numbers 1 to 5)"
    return None


def _precheck(obj: dict[str, Any]) -> str | None:
    """Friendlier messages than pydantic's for the usual coding mistakes."""
    turns = obj.get("turns")
    if isinstance(turns, list):
        for i, turn in enumerate(turns):
            codes = turn.get("codes") if isinstance(turn, dict) else None
            if not isinstance(codes, list):
                continue
            for j, u in enumerate(codes):
                if isinstance(u, dict) and (msg := check_code(u.get("code"))):
                    return f"turn {i + 1}, utterance {j + 1}: {msg}"
    g = obj.get("miti_globals")
    if isinstance(g, dict):
        for name, value in g.items():
            if msg := check_rating(name, value):
                return msg
        missing = [k for k in GLOBALS if k not in g]
        if missing:
            return f"miti_globals lacks {', '.join(missing)} (give all 4 ratings, or null for none)"
    return None


def read_coded_dialogues(path: str | Path) -> list[tuple[int, Dialogue]]:
    """Read a coded Dialogue JSONL as (line number, dialogue); bad lines raise FILE:LINE errors."""
    out: list[tuple[int, Dialogue]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        if msg := _precheck(obj):
            raise InputError(path, msg, lineno)
        try:
            d = Dialogue.model_validate(obj)
        except ValidationError as e:
            raise InputError(path, describe_validation_error(e), lineno) from None
        if d.id in seen:
            raise InputError(path, f"session id {d.id!r} repeats line {seen[d.id]}", lineno)
        seen[d.id] = lineno
        out.append((lineno, d))
    if not out:
        raise InputError(path, "no sessions in the file")
    return out


def load_sessions(path: str | Path, *, allow_uncoded: bool = False) -> list[CodedSession]:
    """Read and check coded sessions; every problem is reported as FILE:LINE."""
    sessions = []
    for lineno, d in read_coded_dialogues(path):
        try:
            sessions.append(CodedSession.from_dialogue(d, allow_uncoded=allow_uncoded))
        except MiLlmError as e:
            raise InputError(path, str(e), lineno) from None
    return sessions
