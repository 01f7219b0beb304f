"""The transcription options (`mi-llm transcribe`, an experiment's `transcribe:`), with their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TranscribeGenerationConfig(BaseModel):
    """Decoding settings of the rewrite; part of the call cache's key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(4096, ge=1, description="longest answer, in tokens")
    seed: int | None = Field(None, description="sampling seed, where the backend honours one")
    json_mode: bool = Field(True, description="ask the openai server for a JSON object answer")

    def key(self) -> dict[str, Any]:
        return self.model_dump()


class ValidationConfig(BaseModel):
    """What a rewrite must keep of the input dialogue to be accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_client_count: bool = True  # the answer has as many client turns as the input
    # Mean similarity (difflib ratio, per character) of each client turn to the original;
    # low enough to allow light re-wording, high enough to catch invented client turns.
    min_client_similarity: float = Field(
        0.5, ge=0, le=1, description="how close rewritten client turns must stay to the originals (0 = off)"
    )
    zh_min_cjk_share: float = 0.6  # share of CJK characters among letters in a zh answer
    en_max_cjk_share: float = 0.02  # an en answer has (almost) no CJK characters
    en_min_ascii_share: float = 0.9  # ... and is mostly ASCII letters


class TranscribeConfig(BaseModel):
    """How dialogues are rewritten: the model and server, rate limits, retries, validation.

    The descriptions are also the help of `mi-llm transcribe`'s options (mi_llm.cli.transcribe).
    """

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("openai", description="openai | hf | llamacpp | vllm")
    model: str = Field("gpt-4o", description="model name (served model name for openai; gemma-3-270m embedded)")
    base_url: str | None = Field(
        None, description="OpenAI-compatible server (default $OPENAI_BASE_URL or api.openai.com)"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    max_tokens_param: str = Field(
        "max_tokens",
        description="openai: request field for --max-tokens (max_completion_tokens for newer models)",
    )
    concurrency: int = Field(4, ge=1, description="dialogues in flight at once (local backends: batch size)")
    # unset = no limit; a negative rpm made the rate limiter index past its window (IndexError)
    rpm: int | None = Field(None, ge=1, description="requests per minute (client-side limit)")
    tpm: int | None = Field(
        None, ge=1, description="tokens per minute (client-side limit)"
    )  # prompt + max_tokens reserved, then the real count
    # as miti code --retries (the openai SDK's retries, with its own capped back-off)
    max_retries: int = Field(6, ge=0, le=100, description="retries of one request on 429, 5xx and timeouts")
    max_repairs: int = Field(2, ge=0, le=100, description="re-asks with the validation error, per dialogue")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request")
    limit: int | None = Field(None, ge=1, description="only the first N input dialogues")
    id_suffix: str = Field("", description="appended to each output id (default: ids are kept)")
    retry_failed: bool = Field(False, description="try the failure report's dialogues again, bypassing the cache")
    cache_path: Path | None = Field(None, description="SQLite call cache (default <output>.cache.sqlite)")
    prices_path: Path | None = Field(
        None, description="price table, YAML or JSON: {model: {input: USD/1M, output: USD/1M}}"
    )
    gen: TranscribeGenerationConfig = Field(default_factory=TranscribeGenerationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    # passed to the backend: e.g. adapter (local backends), parallel (llamacpp)
    backend_opts: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
