"""Generation backends behind one interface, chosen by name.

    backend = get_backend("hf", "gemma-3-270m", adapter="runs/lora")
    completions = backend.generate([sample.messages()], preset("greedy"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import PRESETS, Backend, Completion, GenerationConfig, Messages, preset

BACKENDS = ("hf", "llamacpp", "openai", "vllm", "auto")

__all__ = ["BACKENDS", "PRESETS", "Backend", "Completion", "GenerationConfig", "Messages", "get_backend", "preset"]


def get_backend(name: str, model: Any, adapter: str | Path | None = None, **opts: Any) -> Backend:
    """A loaded backend. `model` is a model name/folder (a served model name for `openai`).

    `auto` is llamacpp where llama-cpp-python is installed and passes its crash probe on this
    CPU, else hf (with a one-line warning). Asking for `llamacpp` by name on a machine where
    the probe fails is an error (exit 2), never a segfault.
    """
    if name == "auto":
        name = resolve_auto_backend()
    if name == "hf":
        from mi_llm.llm.backends.hf import HFBackend

        return HFBackend(model, adapter=adapter, **opts)
    if name == "llamacpp":
        from mi_llm.llm.backends.llamacpp import LlamaCppBackend  # its import_llama_cpp runs the probe

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


def resolve_auto_backend() -> str:
    """llamacpp when llama-cpp-python is installed and works on this CPU, else hf (it warns why)."""
    from mi_llm.llm.llamacpp_runtime import ensure_usable

    return "llamacpp" if ensure_usable(explicit=False) else "hf"
