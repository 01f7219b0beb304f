"""The server's settings (`mi-llm serve`; `mi-llm chat` shares its sampling defaults)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeConfig(BaseModel):
    """The descriptions are also the help of `mi-llm serve`'s options (mi_llm.cli.serve)."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None  # one key, its own owner
    api_keys: dict[str, str] | None = None  # key -> owner id (`auth.read_keys_file`), with api_key
    host: str = Field("127.0.0.1", description="address to listen on; beyond localhost an API key is required")
    allowed_hosts: list[str] = Field(default_factory=list)  # more Host names (NAME or NAME:PORT)
    max_tokens_limit: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    max_request_bytes: int = Field(64 * 1024, ge=1, description="largest request body")
    max_messages: int = 200
    rate_per_minute: float = Field(60.0, ge=0, description="requests per minute per client (0 = no limit)")
    rate_burst: int = Field(20, ge=1, description="requests a client may make at once")
    max_queue: int = Field(64, ge=1, description="requests waiting or running before 503")
    max_checked_messages: int = 100_000  # digests of checked user messages kept (about 20 MB at most)
    language: str | None = None  # None: detected from each message
    log_text: bool = Field(False, description="also log conversation text (off by default: health data)")
    # sampling when a request does not say
    temperature: float = Field(0.7, ge=0, description="default sampling temperature (0 = greedy)")
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = 40
    repetition_penalty: float = 1.1
    strategy: str | None = Field(
        None,
        description="strategy-then-response (a model trained with data build --strategy): 'model' (its own code), "
        "a MITI code (forced, e.g. CR) or 'policy:FILE'; the tag is cut from each reply and stored with it",
    )
