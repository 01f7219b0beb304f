"""The predict stage's settings in an experiment (`generation:`): a decoding preset of
mi_llm.llm.backends with a few fields changed, and how many samples go to one generate call."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mi_llm.build.strategy import check_code
from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import GenerationConfig, preset


class PredictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        "greedy", description="greedy | llamafactory (do_sample, T 0.95, top-p 0.7, top-k 50, 1024 tokens)"
    )
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1, description="conversations per generate call, written together")
    limit: int | None = Field(None, ge=1, description="predict only the first N test samples")
    seed: int = 42
    strategy: str | None = Field(
        None,
        description="strategy-then-response: 'model' (the model writes its code's tag), a MITI code (forced, e.g. "
        "CR) or 'policy:FILE' (a policy picks the code); the tag is cut from the reply and stored with it",
    )

    @model_validator(mode="after")
    def _known_preset(self) -> PredictConfig:
        self.generation_config()
        if self.strategy is not None and self.strategy != "model" and not self.strategy.startswith("policy:"):
            try:
                check_code(self.strategy, "strategy")
            except MiLlmError as e:
                raise ValueError(str(e)) from None
        return self

    def generation_config(self) -> GenerationConfig:
        """The preset with this config's fields; ValueError (a config error) on an unknown preset."""
        try:
            return preset(self.preset, max_new_tokens=self.max_new_tokens, seed=self.seed)
        except MiLlmError as e:
            raise ValueError(str(e)) from None
