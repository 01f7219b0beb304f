"""Strategy-then-response: the counselor's MITI code written as a short tag before its reply.

One format, here: a strategy-conditioned target is `"[CR] reply"`. The build stage writes
it (round samples with `code`, `strategy: true`); predict and serve read it back
(`split_tag`), force it (`Strategy` with a code: the tag is put into the assistant turn
before the model writes), or let a `StrategyPolicy` pick it from the codes so far.

A counselor turn holds several coded utterances; its one code (`turn_code`) is the first
present in `PRINCIPAL_ORDER`: MI-inconsistent codes first (so a tag never hides them),
then reflections (complex before simple), then the rest, questions and information last.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mi_llm.corpus.schema import Code
from mi_llm.errors import InputError, MiLlmError

CODES: tuple[str, ...] = get_args(Code)
PRINCIPAL_ORDER: tuple[str, ...] = ("Confront", "Persuade", "CR", "SR", "AF", "Seek", "EA", "PwP", "Q", "GI")
REFLECTIONS = ("SR", "CR")

_TAG = re.compile(r"^\s*\[(" + "|".join(CODES) + r")\]\s*")
_STRAY_TAG = re.compile(r"\[(?:" + "|".join(CODES) + r")\]\s*")


def format_tag(code: str) -> str:
    """The tag that opens a strategy-conditioned reply (without the space after it)."""
    return f"[{code}]"


def tagged(code: str | None, reply: str) -> str:
    """`"[CR] reply"`; the reply alone when it has no code."""
    return f"{format_tag(code)} {reply}" if code else reply


def split_tag(text: str) -> tuple[str | None, str]:
    """(code, reply) of a generated text; (None, text) when it does not open with a tag.
    Tags later in the text (a briefly trained model writes some mid-reply) are cut from the
    reply: a tag is a control code, never the counselor's words."""
    m = _TAG.match(text)
    if not m:
        return None, _STRAY_TAG.sub("", text)
    return m.group(1), _STRAY_TAG.sub("", text[m.end() :])


class TagStripper:
    """Cuts the tag from the start of a streamed reply: text pieces in, the reply's pieces out
    (`code`: the tag's code once seen), leading whitespace dropped. Holds back only what could
    still be a tag."""

    _LONGEST = max(len(format_tag(c)) for c in CODES)

    def __init__(self) -> None:
        self.code: str | None = None
        self.pending = ""
        self.done = False

    def feed(self, piece: str) -> str:
        if self.done:
            return piece
        self.pending += piece
        head = self.pending.lstrip()
        m = _TAG.match(head)
        if m:
            self.code = m.group(1)
            rest = head[m.end() :]
            if not rest:  # the space after the tag may still come
                return ""
            self.done, self.pending = True, ""
            return rest.lstrip()
        if not head or (head.startswith("[") and "]" not in head and len(head) < self._LONGEST):
            return ""  # maybe a tag: wait for more
        self.done, self.pending = True, ""
        return head  # replies are stripped: no leading whitespace

    def flush(self) -> str:
        """What is still held back when the stream ends."""
        out = "" if self.done or self.code else self.pending.lstrip()
        self.done, self.pending = True, ""
        return out


def turn_code(codes: Iterable[str | None]) -> str | None:
    """The one code of a counselor turn from its utterances' codes (None: none coded)."""
    present = {c for c in codes if c}
    return next((c for c in PRINCIPAL_ORDER if c in present), None)


def check_code(code: str, option: str = "--strategy") -> str:
    if code not in CODES:
        raise MiLlmError(f"{option}: {code!r} is not a MITI code ({', '.join(CODES)})")
    return code


class StrategyPolicy(BaseModel):
    """A small declarative policy: the next code from the counselor's codes so far.

    The first reply is `opening`; then `reflection` until `reflections_per_question`
    reflections followed the last question, then a question (`Q`); with `affirm_every` N,
    an affirmation when the last N replies held none. It never picks Persuade or Confront
    (never persuade without permission: a policy that informs picks GI or PwP).
    """

    model_config = ConfigDict(extra="forbid")

    opening: Code = Field("Q", description="the code of a session's first reply")
    reflections_per_question: int = Field(2, ge=0, description="reflections after each question before the next")
    reflection: Literal["CR", "SR"] = Field("CR", description="CR: complex reflections over simple ones")
    affirm_every: int = Field(0, ge=0, description="an affirmation when the last N replies held none (0: never)")

    @field_validator("opening")
    @classmethod
    def _mi_consistent(cls, code: str) -> str:
        if code in ("Persuade", "Confront"):
            raise ValueError(f"a policy never picks {code} (use PwP: persuade with permission)")
        return code

    def choose(self, previous: Sequence[str | None]) -> str:
        """The code of the next reply, given the codes of the counselor's replies so far."""
        if not previous:
            return self.opening
        if self.affirm_every and len(previous) >= self.affirm_every and "AF" not in previous[-self.affirm_every :]:
            return "AF"
        since_question = 0
        for code in reversed(previous):
            if code == "Q":
                break
            since_question += code in REFLECTIONS
        return "Q" if since_question >= self.reflections_per_question else self.reflection


def load_policy(path: str | Path) -> StrategyPolicy:
    path = Path(path)
    if not path.is_file():
        raise MiLlmError(f"{path}: no such policy file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise InputError(path, f"invalid YAML: {getattr(e, 'problem', e)}", line) from None
    if not isinstance(raw, dict):
        raise InputError(path, "a policy is a mapping (opening, reflections_per_question, reflection, affirm_every)")
    try:
        return StrategyPolicy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(x) for x in first["loc"]) or "policy"
        line = _line_of_key(path, str(first["loc"][0])) if first["loc"] else None
        raise InputError(path, f"{key}: {first['msg']}", line) from None


def _line_of_key(path: Path, key: str) -> int | None:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.split(":", 1)[0].strip() == key:
            return n
    return None


@dataclass(frozen=True)
class Strategy:
    """`--strategy`: `model` (the model writes its tag), a code (forced), or `policy:FILE`."""

    mode: Literal["model", "code", "policy"]
    code: str | None = None
    policy: StrategyPolicy | None = None
    spec: str = "model"

    @classmethod
    def parse(cls, spec: str, option: str = "--strategy") -> Strategy:
        if spec == "model":
            return cls("model", spec=spec)
        if spec.startswith("policy:"):
            return cls("policy", policy=load_policy(spec.removeprefix("policy:")), spec=spec)
        return cls("code", code=check_code(spec, option), spec=spec)

    def describe(self) -> dict[str, object]:
        """JSON-able: the option as given and, for a policy, its settings."""
        return {"spec": self.spec, "policy": self.policy.model_dump() if self.policy else None}

    def requested(self, previous: Sequence[str | None] | None) -> str | None:
        """The code to force for the next reply (None: the model chooses). `previous`: the
        codes of the counselor's replies so far; a policy needs them."""
        if self.mode == "code":
            return self.code
        if self.mode == "policy":
            assert self.policy is not None
            if previous is None:
                raise MiLlmError(
                    f"--strategy {self.spec}: the policy needs the codes of earlier replies; "
                    "build the samples with --codes corpus or auto"
                )
            return self.policy.choose(previous)
        return None

    def prefill(self, messages: list[dict[str, str]], code: str | None) -> list[dict[str, str]]:
        """The messages with the forced tag begun as the assistant's turn (the model goes on from it)."""
        if code is None:
            return messages
        return [*messages, {"role": "assistant", "content": format_tag(code)}]
