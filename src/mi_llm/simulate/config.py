"""`mi-llm simulate`'s settings: one model, from which the command's options are built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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

    def run_key(self) -> dict[str, object]:
        """What must match for a rerun to resume into the same sessions file."""
        return self.model_dump(exclude={"sessions", "retries", "retry_wait_s"})
