"""Chat clients for the transcription: an OpenAI-compatible server through the shared
client (`mi_llm.llm.openai_client`: the openai SDK, its retries), and an adapter over the
shared local backends.

The runner needs, per call: how many HTTP requests it took (for accounting), the usage, and
every Retry-After a server sends (to pause every worker, not only the one that was refused);
the shared client reports all three.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from mi_llm.errors import MiLlmError
from mi_llm.llm.openai_client import ApiError, ChatResult, OpenAICompatClient
from mi_llm.transcribe.config import TranscribeGenerationConfig

log = logging.getLogger(__name__)

__all__ = ["ApiError", "BackendClient", "ChatClient", "ChatResult", "OpenAIClient", "make_client"]

RetryAfterHook = Callable[[float], None]


class ChatClient(Protocol):
    backend: str
    model: str

    async def complete(
        self,
        messages: list[dict[str, str]],
        gen: TranscribeGenerationConfig,
        on_retry_after: RetryAfterHook | None = None,
    ) -> ChatResult: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class OpenAIClient:
    """An OpenAI-compatible server: one `complete` is one chat completion, retried by the SDK
    (`max_retries`) on 429, 5xx, timeouts and dropped connections."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_connections: int = 64,
        max_tokens_param: str = "max_tokens",
        max_retries: int = 6,
    ):
        self.model = model
        self.max_tokens_param = max_tokens_param  # newer OpenAI models want "max_completion_tokens"
        self.client = OpenAICompatClient(
            base_url,
            api_key,
            api_key_env,
            timeout_s=timeout_s,
            max_retries=max_retries,
            max_connections=max_connections,
        )
        self.base_url, self.host = self.client.base_url, self.client.host

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def payload(self, messages: list[dict[str, str]], gen: TranscribeGenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": gen.temperature,
            self.max_tokens_param: gen.max_tokens,
        }
        if gen.top_p != 1.0:
            body["top_p"] = gen.top_p
        if gen.seed is not None:
            body["seed"] = gen.seed
        if gen.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(
        self,
        messages: list[dict[str, str]],
        gen: TranscribeGenerationConfig,
        on_retry_after: RetryAfterHook | None = None,
    ) -> ChatResult:
        return await self.client.complete(_sdk_request(self.payload(messages, gen)), on_retry_after)

    async def aclose(self) -> None:
        await self.client.aclose()


_SDK_FIELDS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "seed",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "stop",
}


def _sdk_request(body: dict[str, Any]) -> dict[str, Any]:
    """A request body as the SDK's arguments: its own fields as they are, others in extra_body."""
    req = {k: v for k, v in body.items() if k in _SDK_FIELDS}
    extra = {k: v for k, v in body.items() if k not in _SDK_FIELDS}
    if extra:
        req["extra_body"] = extra
    return req


class BackendClient:
    """A shared `mi_llm.llm.backends` backend (hf, llamacpp, vllm, ...) behind the async
    interface. Requests that wait together are sent as one batch (up to `batch_size`), in a
    worker thread so the event loop stays free."""

    def __init__(
        self,
        backend: str,
        model: str,
        batch_size: int = 4,
        adapter: str | None = None,
        instance: Any = None,
        **opts: Any,
    ):
        self.backend, self.model, self.batch_size = backend, model, max(1, batch_size)
        if instance is None:
            from mi_llm.llm.backends import get_backend

            try:
                instance = get_backend(backend, model, adapter=adapter, **opts)
            except ImportError as e:
                raise MiLlmError(f"the {backend} backend is not available here ({e})") from None
        self._impl = instance
        self._queue: (
            asyncio.Queue[tuple[list[dict[str, str]], TranscribeGenerationConfig, asyncio.Future[ChatResult]]] | None
        ) = None
        self._worker: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        info = {"backend": self.backend, "model": self.model}
        try:
            info.update(self._impl.describe())
        except Exception:  # describe is informative only
            pass
        return info

    def _config(self, gen: TranscribeGenerationConfig) -> Any:
        from mi_llm.llm.backends import GenerationConfig

        return GenerationConfig(
            max_new_tokens=gen.max_tokens,
            do_sample=gen.temperature > 0,
            temperature=gen.temperature if gen.temperature > 0 else 1.0,
            top_p=gen.top_p,
            seed=gen.seed,
        )

    async def complete(
        self,
        messages: list[dict[str, str]],
        gen: TranscribeGenerationConfig,
        on_retry_after: RetryAfterHook | None = None,
    ) -> ChatResult:
        if self._queue is None:  # (a local model is never rate-limited: no Retry-After)
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        fut: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((messages, gen, fut))
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let the other workers queue their requests too
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            gen = batch[0][1]
            try:
                outs = await asyncio.to_thread(self._impl.generate, [m for m, _, _ in batch], self._config(gen))
            except MiLlmError as e:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(ApiError(str(e)))
                continue
            except Exception as e:  # a backend bug must fail these requests, not hang them
                log.exception("backend %s failed", self.backend)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(ApiError(f"{type(e).__name__}: {e}"))
                continue
            for (_, _, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(ChatResult(out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens))

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        await asyncio.to_thread(self._impl.close)


def make_client(
    backend: str,
    model: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 120.0,
    concurrency: int = 4,
    max_tokens_param: str = "max_tokens",
    max_retries: int = 6,
    **opts: Any,
) -> ChatClient:
    if backend == "openai":
        if opts.get("adapter"):
            raise MiLlmError(
                "--adapter does not apply to the openai backend: serve the adapter and name it with --model"
            )
        return OpenAIClient(
            model,
            base_url=base_url,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            max_connections=max(concurrency, 1),
            max_tokens_param=max_tokens_param,
            max_retries=max_retries,
        )
    if base_url:
        raise MiLlmError(f"--base-url applies to the openai backend only (got --backend {backend})")
    return BackendClient(backend, model, batch_size=concurrency, **opts)
