"""Round-based samples exactly as the paper defines them, the split, and the exports.

For each counselor turn r_t that answers a client turn c_t, the model input is the MI
system prompt + the history h_t = {(c_i, r_i) | i < t} + c_t, and the target is r_t.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_llm.corpus.schema import Dialogue, Language
from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer, iter_models, write_json, write_jsonl
from mi_llm.layout import DATASET_INFO, EXPORT_META, llamafactory_dataset, llamafactory_file, openai_file
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

    def messages(self, with_response: bool = False) -> list[dict[str, str]]:
        """OpenAI-style chat messages: system, history, query (and the target if asked)."""
        msgs = [{"role": "system", "content": self.system}]
        for client, counselor in self.history:
            msgs += [{"role": "user", "content": client}, {"role": "assistant", "content": counselor}]
        msgs.append({"role": "user", "content": self.query})
        if with_response:
            msgs.append({"role": "assistant", "content": self.response})
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
) -> list[Sample]:
    """All round samples of one dialogue; with a budget, keep the most recent rounds that fit."""
    rounds = d.rounds()
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
) -> list[Sample]:
    out = []
    for d in dialogues:
        out += dialogue_samples(d, system_prompt_for(d.language, system_overrides), history_budget, count)
    return out


# ---------------------------------------------------------------- exports

ExportMode = Literal["rounds", "dialogues"]


def _sharegpt_record(system: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    conv = []
    for client, counselor in pairs:
        conv += [{"from": "human", "value": client}, {"from": "gpt", "value": counselor}]
    return {"conversations": conv, "system": system}


def _openai_record(system: str, pairs: Sequence[tuple[str, str]], train_all: bool) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i, (client, counselor) in enumerate(pairs):
        msgs.append({"role": "user", "content": client})
        last = i == len(pairs) - 1
        # OpenAI fine-tuning: weight 0 keeps earlier replies as context only, so a round
        # sample trains on r_t alone, as in the paper.
        msgs.append({"role": "assistant", "content": counselor, **({} if (train_all or last) else {"weight": 0})})
    return {"messages": msgs}


def export_records(
    split: list[Sample] | list[Dialogue], mode: ExportMode, system_overrides: dict[str, str] | None = None
) -> list[tuple[str, list[tuple[str, str]]]]:
    """(system, rounds) per record: one per sample, or one per dialogue with every round."""
    if mode == "rounds":
        return [(s.system, [*s.history, (s.query, s.response)]) for s in split]  # type: ignore[union-attr]
    return [
        (system_prompt_for(d.language, system_overrides), [(c.text, r.text) for c, r in d.rounds()])
        for d in split  # type: ignore[union-attr]
    ]


def write_llamafactory(out: Path, splits: dict[str, list[tuple[str, list[tuple[str, str]]]]], mode: ExportMode) -> None:
    """sharegpt JSON files plus the dataset_info.json that registers them."""
    info = {}
    for name, records in splits.items():
        fname = llamafactory_file(name)
        with atomic_writer(out / fname) as f:
            json.dump([_sharegpt_record(s, p) for s, p in records], f, ensure_ascii=False, indent=1)
        info[llamafactory_dataset(name)] = {
            "file_name": fname,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        }
    write_json(out / DATASET_INFO, info)
    # Round records carry their history as earlier turns: train with `mask_history: true`
    # so only r_t is learned, as in the paper (dialogue records train on every reply).
    write_json(out / EXPORT_META, {"mode": mode, "mask_history": mode == "rounds"})


def write_openai(out: Path, splits: dict[str, list[tuple[str, list[tuple[str, str]]]]], mode: ExportMode) -> None:
    for name, records in splits.items():
        write_jsonl(out / openai_file(name), (_openai_record(s, p, train_all=mode == "dialogues") for s, p in records))
