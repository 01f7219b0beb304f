"""The generation interface every backend implements: batches of chat messages in, texts
out (`generate`), and one conversation's next turn as a stream of text pieces (`stream_chat`).

Each backend registers itself in `BACKENDS` under its name (`@BACKENDS.register("hf")`).
"""

from __future__ import annotations

import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.registry import Registry

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
PRESETS: Registry[GenerationConfig] = Registry("generation preset")
PRESETS.add("greedy", GenerationConfig())
PRESETS.add(
    "llamafactory", GenerationConfig(do_sample=True, temperature=0.95, top_p=0.7, top_k=50, max_new_tokens=1024)
)


def preset(name: str = "greedy", **overrides: Any) -> GenerationConfig:
    """A named preset with the given fields changed (None values are ignored)."""
    return PRESETS.get(name).replace(**overrides)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the closing end-of-turn marker not counted
    finish_reason: str | None = None  # "stop" | "length" | None when unknown


@dataclass
class Finish:
    """The end of a stream: why it ended and how many tokens it took."""

    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    code: str | None = None  # the reply's strategy code (mi_llm.build.strategy), when steered


class Backend(ABC):
    """A loaded model that completes chat conversations."""

    name: str = "base"
    # How many `stream_chat` calls may run at once, each in its own thread (a server runs
    # that many): 1 for a model that streams one conversation at a time.
    stream_concurrency: int = 1

    def warm(self, conversations: Sequence[Messages]) -> None:  # noqa: B027 - optional hook
        """Get ready for conversations that begin like these: a backend whose live streams share
        a cache of prompt prefixes (llama.cpp with parallel slots) computes them now."""

    @abstractmethod
    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        """One completion of the next assistant turn for each conversation, in order."""

    def stream_chat(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        """The next assistant turn of one conversation as text pieces (leading whitespace and
        stop strings never sent), then one `Finish`. Setting `cancel` ends the stream at the
        next token with `Finish("cancelled", ...)`. A backend that streams token by token
        drops the oldest exchanges of a conversation too long for its context.

        This default sends one `generate` call as a single piece."""
        [c] = self.generate([messages], config)
        if c.text:
            yield c.text
        yield Finish(c.finish_reason or "stop", c.prompt_tokens, c.completion_tokens)

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for run metadata (backend, model, adapter, ...)."""
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, servers, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# name -> the factory `(model, adapter=None, **opts) -> Backend` (a Backend class, or `auto`)
BACKENDS: Registry[Callable[..., Backend]] = Registry("backend")


def first_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def fit_context(
    messages: Messages, encode: Callable[[Messages], list[int]], limit: int, max_new: int
) -> tuple[Messages, list[int]]:
    """Drop the oldest exchanges until the prompt and the reply fit the context; (messages, ids)."""
    msgs = list(messages)
    ids = encode(msgs)
    # a last assistant message is the start of the reply (a forced strategy tag): kept
    prefill = 1 if msgs and msgs[-1]["role"] == "assistant" else 0
    while len(ids) + max_new > limit:
        first = 1 if msgs and msgs[0]["role"] == "system" else 0
        if len(msgs) - first - prefill <= 1:
            raise MiLlmError(
                f"the message is too long: {len(ids)} prompt tokens + {max_new} new tokens exceed the "
                f"model's context of {limit} tokens"
            )
        del msgs[first : first + 2]  # one user turn and the reply to it
        ids = encode(msgs)
    return msgs, ids


class StopTrimmer:
    """Holds back text that could be the start of a stop string, so no piece of a stop
    string ever reaches the client; `feed` returns what is safe to send."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = 0
        for s in self.stops:  # the longest tail of pending that begins a stop string
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class LeadingSpaceTrimmer:
    """Drops whitespace before the first visible character (replies are stripped)."""

    def __init__(self) -> None:
        self.started = False

    def feed(self, text: str) -> str:
        if self.started:
            return text
        text = text.lstrip()
        self.started = bool(text)
        return text
