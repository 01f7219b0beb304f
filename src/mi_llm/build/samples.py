"""Round-based samples exactly as the paper defines them, and the split by dialogue.

For each counselor turn r_t that answers a client turn c_t, the model input is the MI
system prompt + the history h_t = {(c_i, r_i) | i < t} + c_t, and the target is r_t.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mi_llm.build.strategy import tagged, turn_code
from mi_llm.corpus.schema import Code, Dialogue, Language
from mi_llm.errors import MiLlmError
from mi_llm.io import iter_models
from mi_llm.prompts import load_prompt

TokenCounter = Callable[[str], int]


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_id: str
    dialogue_id: str
    round: int = Field(ge=1, description="1-based index of the round inside its dialogue")
    language: Language
    source: str
    topic: str | None = None
    system: str
    history: list[tuple[str, str]] = Field(default_factory=list, description="earlier (client, counselor) rounds")
    query: str = Field(description="the client's utterance c_t")
    response: str = Field(description="the counselor's reply r_t, the target")
    truncated_rounds: int = 0
    # MITI codes (`mi-llm data build --codes`): the target reply's one code, and each kept
    # history reply's (mi_llm.build.strategy.turn_code); None where not coded.
    code: Code | None = None
    history_codes: list[Code | None] | None = None
    # True: the target opens with the code's tag, "[CR] reply" (None, not False, so that a
    # sample built without codes is written as before: samples are written without None)
    strategy: bool | None = None

    @property
    def target(self) -> str:
        """What the model learns to write: the reply, after its code's tag when `strategy`."""
        return tagged(self.code, self.response) if self.strategy else self.response

    def messages(self, with_response: bool = False) -> list[dict[str, str]]:
        """OpenAI-style chat messages: system, history, query (and the target if asked)."""
        msgs = [{"role": "system", "content": self.system}]
        for client, counselor in self.history:
            msgs += [{"role": "user", "content": client}, {"role": "assistant", "content": counselor}]
        msgs.append({"role": "user", "content": self.query})
        if with_response:
            msgs.append({"role": "assistant", "content": self.target})
        return msgs


def read_samples(path: str | Path) -> list[Sample]:
    return list(iter_models(path, Sample))


def char_count(text: str) -> int:
    """The default history budget unit: characters (no tokenizer needed)."""
    return len(text)


def dialogue_samples(
    d: Dialogue,
    system: str,
    history_budget: int | None = None,
    count: TokenCounter = char_count,
    codes: bool = False,
    strategy: bool = False,
) -> list[Sample]:
    """All round samples of one dialogue; with a budget, keep the most recent rounds that fit.
    `codes`: each sample carries its counselor turns' codes (`Turn.codes`); `strategy`: its
    target opens with its code's tag."""
    rounds = d.rounds()
    turn_codes = [turn_code(u.code for u in r.codes or ()) for _, r in rounds] if codes else None
    out = []
    for t, (client, counselor) in enumerate(rounds):
        history = [(c.text, r.text) for c, r in rounds[:t]]
        dropped = 0
        if history_budget is not None:
            used = 0
            keep = 0
            for c, r in reversed(history):
                used += count(c) + count(r)
                if used > history_budget:
                    break
                keep += 1
            dropped = len(history) - keep
            history = history[dropped:]
        out.append(
            Sample(
                sample_id=f"{d.id}#{t + 1}",
                dialogue_id=d.id,
                round=t + 1,
                language=d.language,
                source=d.source,
                topic=d.topic,
                system=system,
                history=history,
                query=client.text,
                response=counselor.text,
                truncated_rounds=dropped,
                code=turn_codes[t] if turn_codes else None,
                history_codes=turn_codes[dropped:t] if turn_codes else None,
                strategy=strategy or None,
            )
        )
    return out


def _resolve_count(value: float, available: int, name: str) -> int:
    """A split size given as a count (>= 1) or a fraction (0 < x < 1), capped by what exists."""
    # nan passes every comparison below and int(nan) / int(inf) would raise: refuse them first.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MiLlmError(f"--{name} must be a finite number: a count, or a fraction below 1 (got {value!r})")
    if value < 0:
        raise MiLlmError(f"--{name} must not be negative (got {value})")
    if 0 < value < 1:
        return round(value * available)
    if value != int(value):
        raise MiLlmError(f"--{name} must be a whole count or a fraction below 1 (got {value})")
    return min(int(value), available)


@dataclass
class Split:
    train: list[Dialogue]
    test: list[Dialogue]
    unused: int


def split_dialogues(dialogues: Sequence[Dialogue], train: float = 2000, test: float = 40, seed: int = 42) -> Split:
    """Split by dialogue (seeded, order-independent): test first, then train from the rest.

    Dialogues without any round cannot make samples and are not drawn.
    """
    usable = sorted((d for d in dialogues if d.rounds()), key=lambda d: d.id)
    rng = random.Random(seed)
    rng.shuffle(usable)
    n_test = _resolve_count(test, len(usable), "test")
    n_train = _resolve_count(train, len(usable) - n_test, "train")
    return Split(
        train=usable[n_test : n_test + n_train],
        test=usable[:n_test],
        unused=len(usable) - n_test - n_train,
    )


def system_prompt_for(language: str, overrides: dict[str, str] | None = None) -> str:
    if overrides and language in overrides:
        return overrides[language]
    return load_prompt("system", language)


def build_samples(
    dialogues: Sequence[Dialogue],
    history_budget: int | None = None,
    count: TokenCounter = char_count,
    system_overrides: dict[str, str] | None = None,
    codes: bool = False,
    strategy: bool = False,
) -> list[Sample]:
    out = []
    for d in dialogues:
        system = system_prompt_for(d.language, system_overrides)
        out += dialogue_samples(d, system, history_budget, count, codes=codes, strategy=strategy)
    return out


def augment_code(samples: Sequence[Sample], code: str, copies: int) -> list[Sample]:
    """The samples plus `copies` more of each whose target has `code` (e.g. more complex
    reflections to learn from); each copy right after its original, with its own id."""
    out: list[Sample] = []
    for s in samples:
        out.append(s)
        if s.code == code:
            out += [s.model_copy(update={"sample_id": f"{s.sample_id}+{code}{k}"}) for k in range(1, copies + 1)]
    return out
