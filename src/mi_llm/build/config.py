"""The build stage's settings (`mi-llm data build`; an experiment's `split:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BuildConfig(BaseModel):
    """The build stage (`mi-llm data build`; an experiment's `split:`): the split and the samples.
    The descriptions are also the help of `mi-llm data build`'s options."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(2000, ge=0, description="training dialogues: a count, or a fraction below 1")
    test: float = Field(40, ge=0, description="test dialogues: a count, or a fraction below 1")
    seed: int = Field(42, description="seed of the split")
    history_budget: int | None = Field(
        None, ge=0, description="keep only the most recent rounds of history within this many tokens"
    )
    tokenizer: str = Field(
        "chars", description="unit of --history-budget: 'chars' or a model name/folder whose tokenizer counts"
    )
    export_mode: Literal["rounds", "dialogues"] = Field(
        "rounds",
        description="exports: 'rounds' (one record per sample) or 'dialogues' (one multi-turn record per dialogue)",
    )
