"""Streaming chat engines for `mi-llm chat` and `mi-llm serve`.

An engine turns chat messages into a stream of text pieces followed by one `Finish`.
`BackendEngine` wraps a generation backend of `mi_llm.llm.backends` (one loaded model) and
uses its `stream_chat`: each backend streams in its own way (llama.cpp token by token,
transformers' streamer, the server's deltas, or the whole reply as one piece).

`upstream_engine` is a `BackendEngine` on the openai backend: the model runs on another
OpenAI-compatible server (vLLM, SGLang, llama.cpp's server), which batches the streams;
its failures reach the server as `UpstreamError`.

`EchoEngine` needs no model: it repeats the last user message back, word by word. It is
for trying the server, the web page and clients, and for tests.

An engine streams up to `concurrency` conversations at once, each from its own thread (the
server's worker runs that many): 1 unless its backend decodes several together (llama.cpp
with `parallel` slots) or serves them elsewhere (an OpenAI-compatible upstream).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.build.strategy import Strategy, TagStripper
from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import Backend, Finish, GenerationConfig

log = logging.getLogger(__name__)

__all__ = [
    "BackendEngine",
    "ChatEngine",
    "EchoEngine",
    "Finish",
    "Messages",
    "StrategyEngine",
    "UpstreamError",
    "build_engine",
    "llama_cpp_available",
    "upstream_engine",
]

Messages = list[dict[str, str]]
ECHO = "echo"  # the engine with no model, beside the backends' names


class UpstreamError(MiLlmError):
    """The server the model runs on failed a request. `status`: what to answer the client
    (503 with `retry_after` when the upstream is busy or rate-limits us, else 502)."""

    def __init__(self, message: str, status: int = 502, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ChatEngine:
    """One loaded model that streams the next assistant turn."""

    name = "base"
    model_id = "model"
    concurrency = 1

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        """Text pieces of the reply, then one `Finish`."""
        raise NotImplementedError

    def complete(self, messages: Messages, config: GenerationConfig) -> tuple[str, Finish]:
        parts: list[str] = []
        finish = Finish("stop", 0, 0)
        for item in self.stream(messages, config):
            if isinstance(item, Finish):
                finish = item
            else:
                parts.append(item)
        return "".join(parts), finish

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_id}

    def warm(self, conversations: list[Messages]) -> None:  # noqa: B027 - optional hook
        """Prepare for requests that begin like these (an engine that caches prompt prefixes)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class EchoEngine(ChatEngine):
    """Repeats the last user message ("You said: ..."), one word per piece."""

    name = "echo"

    def __init__(self, model_id: str = "echo", delay: float = 0.0, prefix: str = "You said: ", concurrency: int = 1):
        self.model_id = model_id
        self.delay = delay
        self.prefix = prefix
        self.concurrency = max(1, int(concurrency))

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        words = (self.prefix + last).split(" ")
        prompt_tokens = sum(len(m.get("content", "").split()) for m in messages)
        n = 0
        for i, w in enumerate(words):
            if cancel is not None and cancel.is_set():
                yield Finish("cancelled", prompt_tokens, n)
                return
            if n >= config.max_new_tokens:
                yield Finish("length", prompt_tokens, n)
                return
            if self.delay:
                time.sleep(self.delay)
            n += 1
            yield w if i == 0 else " " + w
        yield Finish("stop", prompt_tokens, n)


class BackendEngine(ChatEngine):
    """A `mi_llm.llm.backends` backend, streamed by its own `stream_chat`."""

    def __init__(self, backend: Backend, model_id: str):
        self.backend = backend
        self.name = backend.name
        self.model_id = model_id
        self.concurrency = max(1, int(backend.stream_concurrency))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_id, **self.backend.describe()}

    def close(self) -> None:
        self.backend.close()

    def warm(self, conversations: list[Messages]) -> None:
        """The backend's own warm-up (llama.cpp with parallel slots: each prompt's prefix cached
        before the first client comes). Measured (docs/serve.md): the first request's first
        token 0.11 s instead of 0.3-0.4 s; a first load of 50 clients unchanged. A failure
        here is logged, never fatal."""
        t0 = time.monotonic()
        try:
            self.backend.warm(conversations)
        except Exception as e:  # noqa: BLE001 - a warm-up is an optimisation
            log.warning("warming the engine failed (%s); serving without it", e)
            return
        log.debug("engine warmed with %d conversation(s) in %.1f s", len(conversations), time.monotonic() - t0)

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        from mi_llm.llm.openai_client import ApiError

        # only role and content reach the model (a stored reply may carry its strategy code)
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            yield from self.backend.stream_chat(plain, config, cancel)
        except ApiError as e:  # a remote server's failure, not the client's request
            busy = e.status in (429, 503)
            raise UpstreamError(
                f"the model server failed: {e}", 503 if busy else 502, e.retry_after if busy else None
            ) from None


class StrategyEngine(ChatEngine):
    """Strategy-then-response around another engine (`--strategy`): a forced or policy code
    begins the assistant's turn as its tag; the tag is cut from the streamed reply and its
    code given in the `Finish`. A policy reads the codes of earlier replies from their
    messages' `code` (what the session store kept)."""

    def __init__(self, inner: ChatEngine, strategy: Strategy):
        self.inner, self.strategy = inner, strategy
        self.name, self.model_id = inner.name, inner.model_id
        self.concurrency = inner.concurrency  # streams are independent: as many as the inner engine

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "strategy": self.strategy.spec}

    def close(self) -> None:
        self.inner.close()

    def warm(self, conversations: list[Messages]) -> None:
        self.inner.warm(conversations)  # the tag comes after the shared prefix

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        previous = [m.get("code") for m in messages if m["role"] == "assistant"]
        requested = self.strategy.requested(previous)
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        stripper = TagStripper()
        for item in self.inner.stream(self.strategy.prefill(plain, requested), config, cancel):
            if isinstance(item, Finish):
                rest = stripper.flush()
                if rest:
                    yield rest
                yield dataclasses.replace(item, code=requested or stripper.code)
                return
            piece = stripper.feed(item)
            if piece:
                yield piece


def llama_cpp_available() -> bool:
    """llama-cpp-python is installed and its build passed the crash probe on this CPU."""
    from mi_llm.llm.backends import resolve_auto_backend

    return resolve_auto_backend() == "llamacpp"


def build_engine(backend: str | None, model: str | None = None, adapter: str | None = None, **opts: Any) -> ChatEngine:
    """Load an engine. `backend=None` picks llamacpp when llama-cpp-python is installed, else hf."""
    if backend == ECHO:
        return EchoEngine(model_id=model or "echo", delay=float(opts.get("echo_delay", 0.0)))
    if backend is None:
        from mi_llm.llm.backends import resolve_auto_backend

        backend = resolve_auto_backend()  # warns in one line when it falls back to hf
    from mi_llm.llm.backends import BACKENDS, get_backend
    from mi_llm.llm.resolve import DEFAULT_MODEL

    opts.pop("echo_delay", None)
    name = model or DEFAULT_MODEL
    if backend not in BACKENDS:
        raise MiLlmError(f"unknown backend {backend!r}; choose one of: {', '.join((*BACKENDS, ECHO))}")
    b = get_backend(backend, name, adapter=adapter, **{k: v for k, v in opts.items() if v is not None})
    # The id clients see: the model name, and the adapter's folder name (not its full path).
    model_id = str(name) + (f"+{Path(adapter).name}" if adapter else "")
    return BackendEngine(b, model_id=model_id)


def upstream_url(url: str) -> str:
    """An OpenAI-compatible server's base URL: http(s), with `/v1` added when no path is given."""
    from urllib.parse import urlparse

    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MiLlmError(f"--upstream {url!r}: give the server's URL, e.g. http://127.0.0.1:8001/v1")
    base = url.strip().rstrip("/")
    return base if parsed.path.strip("/") else base + "/v1"


def upstream_engine(
    url: str,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 64,
    timeout: float = 300.0,
    max_retries: int = 2,
) -> BackendEngine:
    """An engine whose model runs on an OpenAI-compatible server at `url`, up to
    `concurrency` streams at once. Without `model`, the one model the server lists."""
    from mi_llm.llm.backends.openai_api import OpenAIBackend

    base = upstream_url(url)
    backend = OpenAIBackend(
        model or "", base_url=base, api_key=api_key, concurrency=concurrency, max_retries=max_retries, timeout=timeout
    )
    if not model:
        try:
            ids = backend.model_ids()
        except MiLlmError as e:
            backend.close()
            raise MiLlmError(
                f"--upstream {base}: could not list its models ({e}); name one with --upstream-model"
            ) from None
        if len(ids) != 1:
            backend.close()
            listed = ", ".join(ids[:10]) or "none"
            raise MiLlmError(f"--upstream {base} serves {len(ids)} models ({listed}): choose one with --upstream-model")
        backend.model = ids[0]
    engine = BackendEngine(backend, model_id=backend.model)
    engine.name = "upstream"
    return engine
