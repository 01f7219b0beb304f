"""Generation backends behind one interface, chosen by name.

    backend = get_backend("hf", "gemma-3-270m", adapter="runs/lora")
    completions = backend.generate([sample.messages()], preset("greedy"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import PRESETS, Backend, Completion, GenerationConfig, Messages, preset

BACKENDS = ("hf", "llamacpp", "openai", "vllm")

__all__ = ["BACKENDS", "PRESETS", "Backend", "Completion", "GenerationConfig", "Messages", "get_backend", "preset"]


def get_backend(name: str, model: Any, adapter: str | Path | None = None, **opts: Any) -> Backend:
    """A loaded backend. `model` is a model name/folder (a served model name for `openai`)."""
    if name == "hf":
        from mi_llm.llm.backends.hf import HFBackend

        return HFBackend(model, adapter=adapter, **opts)
    if name == "llamacpp":
        from mi_llm.llm.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, adapter=adapter, **opts)
    if name == "openai":
        from mi_llm.llm.backends.openai_api import OpenAIBackend

        if adapter:
            raise MiLlmError("--adapter does not apply to the openai backend: serve the adapter and name it with --model")
        return OpenAIBackend(str(model), **opts)
    if name == "vllm":
        from mi_llm.llm.backends.vllm import VLLMBackend

        return VLLMBackend(model, adapter=adapter, **opts)
    raise MiLlmError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
