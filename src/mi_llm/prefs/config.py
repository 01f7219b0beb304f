"""The options of `mi-llm prefs build` (PrefsConfig) and how a reply is scored (ScoreConfig)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mi_llm.llm.resolve import DEFAULT_MODEL

# What each MITI 4.2.1 code is worth in a reply (the mean over its utterances is the score):
# reflections over questions, complex over simple, affirm / autonomy / collaboration like a
# simple reflection, MI-non-adherent codes below nothing. Uncoded utterances count 0.
DEFAULT_WEIGHTS: dict[str, float] = {
    "CR": 3.0,
    "SR": 2.0,
    "AF": 2.0,
    "EA": 2.0,
    "Seek": 2.0,
    "Q": 1.0,
    "PwP": 0.5,
    "GI": 0.0,
    "Persuade": -2.0,
    "Confront": -3.0,
}


class ScoreConfig(BaseModel):
    """How a sampled reply is scored and which replies the guards reject."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), description="MITI code -> worth; a reply scores the mean"
    )
    min_units: int = Field(3, ge=1, description="fewest words (English) or characters / 2 (Chinese) in a reply")
    max_units: int = Field(120, ge=1, description="most words (English) or characters / 2 (Chinese) in a reply")
    min_distinct_3: float = Field(
        0.6, ge=0, le=1, description="share of distinct 3-grams below which a reply repeats itself"
    )
    max_client_copy: float = Field(
        0.6, ge=0, le=1, description="share of a reply's 4-grams found in the client turn above which it copies it"
    )


class PrefsConfig(BaseModel):
    """`mi-llm prefs build`: sample K replies per round, score them with a MITI coder, keep pairs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="model name, Hugging Face id or local folder")
    adapter: str | None = Field(None, description="LoRA adapter folder (the SFT model) to sample from")
    backend: str = Field("auto", description="generation backend (auto: llamacpp where it works here, else hf)")
    k: int = Field(4, ge=2, le=64, description="replies sampled per round")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(
        96, ge=1, description="longest sampled reply in tokens (a reply cut there keeps its whole utterances)"
    )
    seed: int = 42
    batch_size: int = Field(8, ge=1, description="rounds per generate call (each sampled K times)")
    limit: int | None = Field(None, ge=1, description="only the first N rounds of --data")
    coder: str = Field("default", description="the MITI coder that scores replies (default, a folder, llm:...)")
    min_margin: float = Field(0.5, ge=0, description="least score difference between chosen and rejected")
    degenerate_rejected: bool = Field(
        True, description="a degenerate reply may be the rejected one when no scored pair has the margin"
    )
    score: ScoreConfig = Field(default_factory=ScoreConfig)
