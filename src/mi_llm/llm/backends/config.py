"""Each backend's own options (what `ModelConfig.backend_options` and the CLI's backend options
may set), with their defaults. The generic decoding settings are GenerationConfig (base.py).

tests/llm/test_backend_config.py checks these defaults are the backends' own (their
constructors' keyword defaults), so a default changed in one place fails there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mi_llm.errors import MiLlmError
from mi_llm.registry import Registry


class _BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HFConfig(_BackendConfig):
    device: str | None = Field(None, description="hf/vllm: cpu | cuda (default: cuda when available)")
    dtype: Any = None
    batch_size: int = Field(16, ge=1)
    merge_adapter: bool = True


class LlamaCppConfig(_BackendConfig):
    gguf: str | None = Field(None, description="llamacpp: the GGUF to load (default: the model's own)")
    n_ctx: int = Field(4096, ge=1, description="llamacpp: context length")
    n_threads: int | None = Field(None, ge=1, description="llamacpp: CPU threads")
    n_batch: int = Field(512, ge=1)
    parallel: int = Field(1, ge=1, description="llamacpp: sequences decoded together (1 = single stream)")
    seed: int | None = 42
    lora_scale: float = 1.0


class OpenAIConfig(_BackendConfig):
    base_url: str | None = Field(
        None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1 (key from OPENAI_API_KEY)"
    )
    api_key: str | None = None
    concurrency: int = Field(8, ge=1, description="openai: requests in flight")
    max_retries: int = Field(6, ge=0, description="openai: the SDK's retries of a request (429, 5xx, timeouts)")
    timeout: float = 120.0
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = Field(None, description="openai: JSON object merged into each request")
    max_tokens_param: str = "max_tokens"


class VLLMConfig(_BackendConfig):
    device: str | None = None
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = None


# backend name -> the option models it takes
BACKEND_CONFIGS: Registry[tuple[type[_BackendConfig], ...]] = Registry("backend")
BACKEND_CONFIGS.add("hf", (HFConfig,))
BACKEND_CONFIGS.add("llamacpp", (LlamaCppConfig,))
BACKEND_CONFIGS.add("openai", (OpenAIConfig,))
BACKEND_CONFIGS.add("vllm", (VLLMConfig,))
BACKEND_CONFIGS.add("auto", (LlamaCppConfig, HFConfig))  # either, once resolved: each ignores the other's options


def check_backend_options(backend: str, options: dict[str, Any]) -> None:
    """MiLlmError naming the first option `backend` does not take, or whose value is invalid."""
    configs = BACKEND_CONFIGS.get(backend)
    known = {name for c in configs for name in c.model_fields}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MiLlmError(f"backend {backend} has no option {unknown[0]!r}; its options: {', '.join(sorted(known))}")
    for c in configs:
        mine = {k: v for k, v in options.items() if k in c.model_fields}
        try:
            c.model_validate(mine)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise MiLlmError(f"backend {backend} option {where}: {first['msg']}") from None
