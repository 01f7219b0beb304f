"""Preference pairs: the schema of a pairs file (`mi-llm prefs build -o prefs.jsonl`), its
reader (a malformed line is a `FILE:LINE` error), and the exports other trainers read:
LLaMA-Factory's pairwise sharegpt (`ranking: true` in dataset_info.json) and TRL's
prompt / chosen / rejected records (conversational form).

A pair carries its round sample's context (system prompt, history, client turn) so a
trainer needs no other file, and the scores that chose it so a reader can see why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mi_llm.build.samples import Sample
from mi_llm.corpus.schema import Language
from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer, read_models, write_json, write_jsonl
from mi_llm.layout import DATASET_INFO

# LLaMA-Factory dataset name and file of the pairwise export.
LLAMAFACTORY_DATASET = "mi_prefs"
LLAMAFACTORY_FILE = "mi_prefs.json"


class ScoredReply(BaseModel):
    """One sampled reply as the scorer saw it."""

    model_config = ConfigDict(extra="forbid")
    text: str
    score: float | None = Field(None, description="higher is more MI-consistent; None when not scored")
    codes: list[str | None] = Field(default_factory=list, description="the coder's code of each utterance")
    degenerate: str | None = Field(None, description="why the guards rejected it (length, repetition, ...)")
    trimmed: bool = Field(False, description="cut at the token limit; kept up to its last whole utterance")


class PreferencePair(BaseModel):
    """One round: its context, a chosen and a rejected reply, and their scores."""

    model_config = ConfigDict(extra="forbid")
    pair_id: str
    sample_id: str
    dialogue_id: str
    round: int = Field(ge=1)
    language: Language
    system: str
    history: list[tuple[str, str]] = Field(default_factory=list)
    query: str
    chosen: ScoredReply
    rejected: ScoredReply
    coder: str = Field("", description="the coder that scored the replies")

    @model_validator(mode="after")
    def _distinct(self) -> PreferencePair:
        if not self.chosen.text.strip() or not self.rejected.text.strip():
            raise ValueError("chosen and rejected must be non-empty")
        if self.chosen.text == self.rejected.text:
            raise ValueError("chosen and rejected are the same text")
        return self

    @classmethod
    def of_sample(cls, s: Sample, chosen: ScoredReply, rejected: ScoredReply, coder: str = "") -> PreferencePair:
        """The pair for round sample `s` (its context; the pair named after the sample)."""
        return cls(
            pair_id=s.sample_id,
            sample_id=s.sample_id,
            dialogue_id=s.dialogue_id,
            round=s.round,
            language=s.language,
            system=s.system,
            history=list(s.history),
            query=s.query,
            chosen=chosen,
            rejected=rejected,
            coder=coder,
        )

    @property
    def margin(self) -> float | None:
        if self.chosen.score is None or self.rejected.score is None:
            return None
        return self.chosen.score - self.rejected.score

    def sample(self, reply: str) -> Sample:
        """The round sample with `reply` as its target (what a trainer encodes)."""
        return Sample(
            sample_id=self.sample_id,
            dialogue_id=self.dialogue_id,
            round=self.round,
            language=self.language,
            source="prefs",
            system=self.system,
            history=list(self.history),
            query=self.query,
            response=reply,
        )

    def prompt_messages(self) -> list[dict[str, str]]:
        return self.sample("").messages(with_response=False)


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Every pair of a pairs file; a malformed line or a repeated pair id is `FILE:LINE: what`."""
    path = Path(path)
    if not path.is_file():
        raise MiLlmError(f"{path}: no such pairs file")
    pairs = read_models(
        path, PreferencePair, key=lambda p: p.pair_id, what="pair_id", invalid="not a preference pair: "
    )
    if not pairs:
        raise MiLlmError(f"{path}: no preference pairs")
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> int:
    return write_jsonl(path, pairs)


# ---------------------------------------------------------------- exports


def _sharegpt_context(pair: PreferencePair) -> list[dict[str, str]]:
    conv = []
    for client, counselor in pair.history:
        conv += [{"from": "human", "value": client}, {"from": "gpt", "value": counselor}]
    conv.append({"from": "human", "value": pair.query})
    return conv


def write_llamafactory_pairs(folder: str | Path, pairs: Sequence[PreferencePair]) -> Path:
    """LLaMA-Factory's pairwise sharegpt dataset (for `stage: dpo|kto` ... `dataset: mi_prefs`):
    each record's conversation ends with the client turn, then `chosen` and `rejected` messages;
    dataset_info.json registers it with `ranking: true`."""
    folder = Path(folder)
    records: list[dict[str, Any]] = [
        {
            "conversations": _sharegpt_context(p),
            "chosen": {"from": "gpt", "value": p.chosen.text},
            "rejected": {"from": "gpt", "value": p.rejected.text},
            "system": p.system,
        }
        for p in pairs
    ]
    with atomic_writer(folder / LLAMAFACTORY_FILE) as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
    info = {
        LLAMAFACTORY_DATASET: {
            "file_name": LLAMAFACTORY_FILE,
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
        }
    }
    write_json(folder / DATASET_INFO, info)
    return folder


def trl_record(pair: PreferencePair) -> dict[str, Any]:
    """TRL's conversational preference record (DPOTrainer; KTO after its unpairing helper)."""
    return {
        "prompt": pair.prompt_messages(),
        "chosen": [{"role": "assistant", "content": pair.chosen.text}],
        "rejected": [{"role": "assistant", "content": pair.rejected.text}],
    }


def write_trl_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> int:
    return write_jsonl(path, (trl_record(p) for p in pairs))
