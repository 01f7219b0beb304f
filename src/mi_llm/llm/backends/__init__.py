"""Generation backends behind one interface, chosen by name.

    backend = get_backend("hf", "gemma-3-270m", adapter="runs/lora")
    completions = backend.generate([sample.messages()], preset("greedy"))
    for piece in backend.stream_chat(messages, preset("greedy")): ...

Each backend module registers its class in `BACKENDS` (`@BACKENDS.register("hf")`); importing
a module costs little (torch, llama.cpp, vLLM and the openai SDK load when a backend is made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Importing each module registers its backend, in this order (the order of the choices).
from mi_llm.llm.backends import hf, llamacpp, openai_api, vllm  # noqa: F401, I001
from mi_llm.llm.backends.base import (
    BACKENDS,
    PRESETS,
    Backend,
    Completion,
    Finish,
    GenerationConfig,
    Messages,
    preset,
)

__all__ = [
    "BACKENDS",
    "PRESETS",
    "Backend",
    "Completion",
    "Finish",
    "GenerationConfig",
    "Messages",
    "get_backend",
    "preset",
    "resolve_auto_backend",
]


def get_backend(name: str, model: Any, adapter: str | Path | None = None, **opts: Any) -> Backend:
    """A loaded backend. `model` is a model name/folder (a served model name for `openai`).

    `auto` is llamacpp where llama-cpp-python is installed and passes its crash probe on this
    CPU, else hf (with a one-line warning). Asking for `llamacpp` by name on a machine where
    the probe fails is an error (exit 2), never a segfault.
    """
    return BACKENDS.get(name)(model, adapter=adapter, **opts)


def resolve_auto_backend() -> str:
    """llamacpp when llama-cpp-python is installed and works on this CPU, else hf (it warns why)."""
    from mi_llm.llm.llamacpp_runtime import ensure_usable

    return "llamacpp" if ensure_usable(explicit=False) else "hf"


@BACKENDS.register("auto")
def _auto(model: Any, adapter: str | Path | None = None, **opts: Any) -> Backend:
    return BACKENDS.get(resolve_auto_backend())(model, adapter=adapter, **opts)
