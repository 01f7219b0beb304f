"""Chat clients for the transcription: an async OpenAI-compatible HTTP client with the
fine control a paid bulk job needs, and an adapter over the shared local backends.

The HTTP client is our own (httpx) rather than the shared `openai` backend because the
runner needs, per request: the status and Retry-After of each failure (to pause every
worker, not only the one that was refused), the usage of each call for accounting, and
async concurrency under request- and token-rate limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx

from mi_llm.errors import MiLlmError
from mi_llm.transcribe.config import TranscribeGenerationConfig
from mi_llm.transcribe.ratelimit import estimate_tokens, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401, 403, 404}  # bad key, no access, unknown model or URL: no request can succeed


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False  # the server reported no usage: counted by estimate


class ApiError(Exception):
    """A failed request. `retryable`: worth trying again (429, 5xx, timeouts, dropped
    connections); `fatal`: no request can succeed (bad key, unknown model): stop the run."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 fatal: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retryable, self.fatal, self.retry_after = status, retryable, fatal, retry_after


class ChatClient(Protocol):
    backend: str
    model: str

    async def complete(self, messages: list[dict[str, str]], gen: TranscribeGenerationConfig) -> ChatResult: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class OpenAIClient:
    """POST {base_url}/chat/completions, one attempt per call (the runner retries)."""

    backend = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0, max_connections: int = 64,
                 max_tokens_param: str = "max_tokens"):
        self.model = model
        self.max_tokens_param = max_tokens_param  # newer OpenAI models want "max_completion_tokens"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.host = urlparse(self.base_url).hostname or self.base_url
        key = api_key or os.environ.get(api_key_env)
        if not key and self.host not in LOCAL_HOSTS:
            raise MiLlmError(f"the openai backend needs an API key for {self.host}: set {api_key_env}")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def payload(self, messages: list[dict[str, str]], gen: TranscribeGenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": gen.temperature,
                                self.max_tokens_param: gen.max_tokens}
        if gen.top_p != 1.0:
            body["top_p"] = gen.top_p
        if gen.seed is not None:
            body["seed"] = gen.seed
        if gen.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, messages: list[dict[str, str]], gen: TranscribeGenerationConfig) -> ChatResult:
        try:
            resp = await self._http.post("/chat/completions", json=self.payload(messages, gen))
        except httpx.TimeoutException as e:
            raise ApiError(f"timeout ({type(e).__name__})", retryable=True) from None
        except httpx.TransportError as e:
            raise ApiError(f"connection failed ({type(e).__name__}: {e})", retryable=True) from None
        if resp.status_code != 200:
            raise _status_error(resp)
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ApiError("HTTP 200 with a body that is not a chat completion", status=200, retryable=True) from None
        usage = data.get("usage") or {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(pt, int) and isinstance(ct, int):
            return ChatResult(text, finish, pt, ct)
        return ChatResult(text, finish, estimate_tokens(messages), estimate_tokens([{"content": text}]), True)

    async def aclose(self) -> None:
        await self._http.aclose()


def _status_error(resp: httpx.Response) -> ApiError:
    status = resp.status_code
    code, message = None, ""
    try:
        err = resp.json().get("error") or {}
        if isinstance(err, dict):
            code, message = err.get("code") or err.get("type"), str(err.get("message") or "")
        else:
            message = str(err)
    except (ValueError, AttributeError):
        message = resp.text[:200]
    text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message[:200]}" if message else "")
    if status == 429 and code == "insufficient_quota":  # out of credit: waiting will not help
        return ApiError(text, status=status, fatal=True)
    return ApiError(text, status=status, retryable=status in RETRYABLE_STATUS, fatal=status in FATAL_STATUS,
                    retry_after=parse_retry_after(resp.headers))


class BackendClient:
    """A shared `mi_llm.llm.backends` backend (hf, llamacpp, vllm, ...) behind the async
    interface. Requests that wait together are sent as one batch (up to `batch_size`), in a
    worker thread so the event loop stays free."""

    def __init__(self, backend: str, model: str, batch_size: int = 4, adapter: str | None = None,
                 instance: Any = None, **opts: Any):
        self.backend, self.model, self.batch_size = backend, model, max(1, batch_size)
        if instance is None:
            from mi_llm.llm.backends import get_backend

            try:
                instance = get_backend(backend, model, adapter=adapter, **opts)
            except ImportError as e:
                raise MiLlmError(f"the {backend} backend is not available here ({e})") from None
        self._impl = instance
        self._queue: asyncio.Queue[tuple[list[dict[str, str]], TranscribeGenerationConfig, asyncio.Future[ChatResult]]] | None = None
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

        return GenerationConfig(max_new_tokens=gen.max_tokens, do_sample=gen.temperature > 0,
                                temperature=gen.temperature if gen.temperature > 0 else 1.0,
                                top_p=gen.top_p, seed=gen.seed)

    async def complete(self, messages: list[dict[str, str]], gen: TranscribeGenerationConfig) -> ChatResult:
        if self._queue is None:
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


def make_client(backend: str, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                timeout_s: float = 120.0, concurrency: int = 4, max_tokens_param: str = "max_tokens",
                **opts: Any) -> ChatClient:
    if backend == "openai":
        if opts.get("adapter"):
            raise MiLlmError("--adapter does not apply to the openai backend: serve the adapter and name it with --model")
        return OpenAIClient(model, base_url=base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                            max_connections=max(concurrency, 1), max_tokens_param=max_tokens_param)
    if base_url:
        raise MiLlmError(f"--base-url applies to the openai backend only (got --backend {backend})")
    return BackendClient(backend, model, batch_size=concurrency, **opts)
