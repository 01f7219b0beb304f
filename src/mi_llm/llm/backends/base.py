"""The generation interface every backend implements: batches of chat messages in, texts out."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mi_llm.errors import MiLlmError

Messages = list[dict[str, str]]


@dataclass
class GenerationConfig:
    """Decoding settings; `do_sample=False` is greedy and ignores the sampling knobs."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = 42
    stop: list[str] = field(default_factory=list)  # extra stop strings beside the model's end of turn

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MiLlmError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.do_sample and self.temperature <= 0:
            raise MiLlmError(f"temperature must be positive when sampling (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise MiLlmError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise MiLlmError("top_k must be >= 0 and repetition_penalty > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> GenerationConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# "llamafactory" = LLaMA-Factory's generation defaults (its GeneratingArguments).
PRESETS: dict[str, GenerationConfig] = {
    "greedy": GenerationConfig(),
    "llamafactory": GenerationConfig(do_sample=True, temperature=0.95, top_p=0.7, top_k=50, max_new_tokens=1024),
}


def preset(name: str = "greedy", **overrides: Any) -> GenerationConfig:
    """A named preset with the given fields changed (None values are ignored)."""
    if name not in PRESETS:
        raise MiLlmError(f"unknown generation preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the closing end-of-turn marker not counted
    finish_reason: str | None = None  # "stop" | "length" | None when unknown


class Backend(ABC):
    """A loaded model that completes chat conversations."""

    name: str = "base"

    @abstractmethod
    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        """One completion of the next assistant turn for each conversation, in order."""

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for run metadata (backend, model, adapter, ...)."""
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, servers, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
