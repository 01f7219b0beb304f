"""`mi-llm simulate`'s settings: one model, from which the command's options are built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_llm.build.strategy import Strategy, check_code
from mi_llm.errors import MiLlmError
from mi_llm.llm.resolve import DEFAULT_MODEL


class SimulateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    counselor: str = Field(
        DEFAULT_MODEL, description="counselor model: name, HF id, folder; the served model name with --counselor-url"
    )
    counselor_adapter: str | None = Field(None, description="the counselor's LoRA adapter folder")
    counselor_backend: str = Field("auto", description="hf | llamacpp | openai | vllm | auto")
    counselor_url: str | None = Field(
        None, description="an OpenAI-compatible counselor endpoint (e.g. `mi-llm serve`); implies --backend openai"
    )
    client: str = Field(
        DEFAULT_MODEL,
        description="client model (the embedded 270M one is a toy client); the served name with --client-url",
    )
    client_backend: str = Field("auto", description="the client's backend: hf | llamacpp | openai | vllm | auto")
    client_url: str | None = Field(None, description="an OpenAI-compatible client endpoint; implies openai")
    personas: str = Field("demo", description="demo | demo:zh | demo:en | cards JSONL | PatientHub consistentMI.json")
    language: Literal["zh", "en"] | None = Field(
        None, description="run every persona in this language (default: each card's own)"
    )
    sessions: int = Field(4, ge=1, le=100_000, description="sessions to simulate (personas taken in turn)")
    max_rounds: int = Field(30, ge=1, le=1000, description="counselor turns before a session ends unresolved")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seeds each session's state machine and the sampling")
    counselor_max_tokens: int = Field(128, ge=1, le=4096, description="new tokens per counselor reply")
    client_max_tokens: int = Field(96, ge=1, le=4096, description="new tokens per client turn")
    client_temperature: float = Field(0.8, ge=0, le=2, description="the client's sampling temperature (0: greedy)")
    retries: int = Field(2, ge=0, le=10, description="retries of a failed generate call before a session fails")
    retry_wait_s: float = Field(1.0, ge=0, description="first wait before a retry; doubled each time")
    coder: str = Field("default", description="MITI coder of the counselor's replies (state machine and outcomes)")
    client_coder: str = Field("default", description="client-talk coder of the client's turns (outcomes)")
    strategy: str | None = Field(
        None,
        description="strategy-then-response (a counselor trained with data build --strategy): 'model' (its own "
        "code), a MITI code (forced, e.g. CR) or 'policy:FILE' (a policy picks each reply's code from the coded "
        "earlier ones); the tag is cut from every reply and its code kept in the turn's meta",
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, spec: str | None) -> str | None:
        # the policy file itself is read (and checked) by Strategy.parse, before any model loads
        if spec is not None and spec != "model" and not spec.startswith("policy:"):
            try:
                check_code(spec, "strategy")
            except MiLlmError as e:
                raise ValueError(str(e)) from None
        return spec

    def steering(self) -> Strategy | None:
        """The parsed `strategy` (a policy file read and checked: FILE:LINE, exit 2); None: no prefill."""
        return Strategy.parse(self.strategy, "--strategy") if self.strategy is not None else None

    def run_key(self) -> dict[str, object]:
        """What must match for a rerun to resume into the same sessions file; the strategy only
        when set, so that sessions from before it existed still resume."""
        exclude = {"sessions", "retries", "retry_wait_s"} | ({"strategy"} if self.strategy is None else set())
        return self.model_dump(exclude=exclude)
