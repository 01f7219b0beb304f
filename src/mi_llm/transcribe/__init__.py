"""The MI transcription stage: rewrite counseling dialogues into MI style with an LLM.

    from mi_llm.transcribe import TranscribeConfig, transcribe_file
    stats = transcribe_file("dialogues.jsonl", "mi.jsonl", TranscribeConfig(backend="openai", model="gpt-4o"))

See docs/transcribe.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names __getattr__ loads, for type checkers
    from mi_llm.transcribe.config import TranscribeConfig as TranscribeConfig
    from mi_llm.transcribe.config import TranscribeGenerationConfig as TranscribeGenerationConfig
    from mi_llm.transcribe.config import ValidationConfig as ValidationConfig
    from mi_llm.transcribe.prompt import load_rewrite_prompt as load_rewrite_prompt
    from mi_llm.transcribe.prompt import prepare as prepare
    from mi_llm.transcribe.prompt import render_messages as render_messages
    from mi_llm.transcribe.runner import RunStats as RunStats
    from mi_llm.transcribe.runner import transcribe_file as transcribe_file
    from mi_llm.transcribe.store import failures_path as failures_path
    from mi_llm.transcribe.validate import validate_answer as validate_answer

# Loaded on first use: the CLI reads TranscribeConfig's defaults while it builds its options,
# and must not pay for the HTTP client and the runner then.
_HOMES = {
    "TranscribeConfig": "config",
    "TranscribeGenerationConfig": "config",
    "ValidationConfig": "config",
    "load_rewrite_prompt": "prompt",
    "prepare": "prompt",
    "render_messages": "prompt",
    "RunStats": "runner",
    "transcribe_file": "runner",
    "failures_path": "store",
    "validate_answer": "validate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
