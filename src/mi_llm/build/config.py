"""The build stage's settings (`mi-llm data build`; an experiment's `split:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    codes: Literal["none", "corpus", "auto"] = Field(
        "none",
        description="MITI code of each target reply: 'corpus' (the corpus's own codes), 'auto' (the automatic "
        "coder, --coder) or 'none'",
    )
    coder: str = Field("default", description="the coder of --codes auto: 'default' (shipped) or a coder folder")
    strategy: bool = Field(
        False, description="strategy-then-response: each target opens with its code's tag, '[CR] reply' (needs --codes)"
    )
    augment_cr: int = Field(
        0,
        ge=0,
        le=100,
        description="extra copies of each training sample whose target is a complex reflection (needs --codes)",
    )

    @model_validator(mode="after")
    def _codes_needed(self) -> BuildConfig:
        if self.codes == "none" and (self.strategy or self.augment_cr):
            raise ValueError("strategy and augment_cr need the codes of the replies: set codes to corpus or auto")
        if self.strategy and self.export_mode == "dialogues":
            raise ValueError("strategy tags round targets: use export_mode rounds")
        return self

    def fingerprint(self) -> dict[str, object]:
        """The settings a rebuild depends on; the code options only when set, so that a build
        from before they existed stays up to date."""
        extra = ("codes", "coder", "strategy", "augment_cr")
        dump = self.model_dump()
        return {k: v for k, v in dump.items() if k not in extra or v != BuildConfig.model_fields[k].default}
