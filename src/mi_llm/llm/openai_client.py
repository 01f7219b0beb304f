"""The one client of OpenAI-compatible chat servers (OpenAI and GPT-4-class APIs, vLLM,
llama.cpp server, Ollama): the `openai` SDK's `AsyncOpenAI`, for the `openai` backend
(batch generation, the chat server's streams, the LLM MITI coder) and the transcription.

Retries are the SDK's: 408, 409, 429, 5xx, timeouts and dropped connections are tried again
up to `max_retries` times, with exponential back-off and jitter, honouring the server's
Retry-After; other errors (bad key, unknown model, bad request) fail at once, and so does a
429 that says the account is out of credit (waiting will not help). Each call reports how
many HTTP requests it took (`attempts`), and a caller may hear of every Retry-After (to
pause its other requests too).

Conversation text leaves the machine here: only when the user chose an API backend. No text
is logged.

Sync code (a `Backend`) uses the client through `LoopThread`: one event loop in a thread of
its own, so the SDK's connection pool lives in one loop for the client's whole life.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from mi_llm.errors import MiLlmError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401, 403, 404}  # bad key, no access, unknown model or URL: no request can succeed

MAX_RETRY_AFTER_S = 600.0
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")

T = TypeVar("T")


class ApiError(MiLlmError):
    """A call that failed after the SDK's retries. `retryable`: worth trying again later (429,
    5xx, timeouts, dropped connections); `fatal`: no request can succeed (bad key, unknown
    model); `attempts`: the HTTP requests it took."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        fatal: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
    ):
        super().__init__(message)
        self.status, self.retryable, self.fatal, self.retry_after = status, retryable, fatal, retry_after
        self.attempts = attempts


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False  # the server reported no usage: counted by estimate
    attempts: int = 1  # HTTP requests made (1 + retries); 0 when no request was needed


@dataclass
class _Call:
    """What one call saw of its HTTP requests (the SDK's retries are invisible otherwise)."""

    on_retry_after: Callable[[float], None] | None = None
    attempts: int = 0


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("mi_llm_openai_call", default=None)


def resolve_endpoint(
    base_url: str | None, api_key: str | None, api_key_env: str = "OPENAI_API_KEY"
) -> tuple[str, str, str]:
    """(base URL, host, key): the URL from the argument, OPENAI_BASE_URL or OpenAI's; a local
    server needs no key ("EMPTY"), a remote one must have one."""
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    host = urlparse(url).hostname or url
    key = api_key or os.environ.get(api_key_env)
    if not key:
        if host not in LOCAL_HOSTS:
            raise MiLlmError(f"the openai backend needs an API key for {host}: set {api_key_env}")
        key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
    return url, host, key


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A rough token count for rate limiting before the server tells the real one (or where
    it tells none): about one token per CJK character and one per four other characters."""
    total = 0
    for m in messages:
        text = m.get("content", "")
        cjk = len(_CJK.findall(text))
        total += cjk + (len(text) - cjk + 3) // 4 + 4
    return total + 2


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI), or `Retry-After` in seconds or as an HTTP date."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(lower["retry-after-ms"]) / 1000))
        value = lower.get("retry-after")
        if value is None:
            return None
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - (time.time() if now is None else now)))
    except (TypeError, ValueError):
        return None


class OpenAICompatClient:
    """An `AsyncOpenAI` with our defaults; `complete` and `stream` take a chat-completions
    request (a dict of the API's fields, `extra_body` for a server's own ones)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 6,
        max_connections: int = 64,
    ):
        self.base_url, self.host, self._key = resolve_endpoint(base_url, api_key, api_key_env)
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.max_connections = max(1, int(max_connections))
        self._sdk: Any = None

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def _client(self) -> Any:
        # Made on first use, inside the event loop that will use it: the SDK's connection
        # pool belongs to one loop.
        if self._sdk is None:
            import httpx2
            import openai

            http = openai.DefaultAsyncHttpxClient(
                timeout=httpx2.Timeout(self.timeout_s, connect=min(self.timeout_s, 15.0)),
                limits=httpx2.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                ),
                event_hooks={"request": [_count_request], "response": [_see_response]},
            )
            self._sdk = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
                http_client=http,
            )
        return self._sdk

    async def complete(
        self, request: dict[str, Any], on_retry_after: Callable[[float], None] | None = None
    ) -> ChatResult:
        """One chat completion (the SDK retries transient failures); `ApiError` when it fails."""
        call = _Call(on_retry_after)
        token = _CALL.set(call)
        try:
            resp = await self._client().chat.completions.create(**request)
        except Exception as e:  # noqa: BLE001 - mapped to one ApiError kind per cause
            raise _api_error(e, call.attempts) from None
        finally:
            _CALL.reset(token)
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
            finish = choice.finish_reason
        except (AttributeError, IndexError, TypeError):
            raise ApiError(
                "HTTP 200 with a body that is not a chat completion", status=200, retryable=True, attempts=call.attempts
            ) from None
        usage = getattr(resp, "usage", None)
        pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if isinstance(pt, int) and isinstance(ct, int):
            return ChatResult(text, finish, pt, ct, attempts=call.attempts)
        return ChatResult(
            text,
            finish,
            estimate_tokens(request.get("messages", [])),
            estimate_tokens([{"content": text}]),
            True,
            attempts=call.attempts,
        )

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ChatResult]:
        """The text deltas of one chat completion, then a `ChatResult` (text "") with the finish
        reason and the usage (the server's, else estimated). Closing the iterator early closes
        the connection, which ends the generation on the server."""
        call = _Call()
        token = _CALL.set(call)
        try:
            stream = await self._client().chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        except Exception as e:  # noqa: BLE001
            raise _api_error(e, call.attempts) from None
        finally:
            _CALL.reset(token)
        finish: str | None = None
        usage: Any = None
        pieces: list[str] = []
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = getattr(choice.delta, "content", None)
                    if delta:
                        pieces.append(delta)
                        yield delta
                    finish = choice.finish_reason or finish
        except Exception as e:  # noqa: BLE001 - a stream cut in the middle
            raise _api_error(e, call.attempts) from None
        finally:
            await stream.close()
        pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if isinstance(pt, int) and isinstance(ct, int):
            yield ChatResult("", finish, pt, ct, attempts=call.attempts)
        else:
            yield ChatResult(
                "",
                finish,
                estimate_tokens(request.get("messages", [])),
                estimate_tokens([{"content": "".join(pieces)}]),
                True,
                attempts=call.attempts,
            )

    async def model_ids(self) -> list[str]:
        """The ids of the models the server lists (`GET /models`)."""
        try:
            page = await self._client().models.list()
        except Exception as e:  # noqa: BLE001
            raise _api_error(e, 1) from None
        return [m.id for m in page.data]

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None


async def _count_request(request: Any) -> None:
    call = _CALL.get()
    if call is not None:
        call.attempts += 1


async def _see_response(response: Any) -> None:
    """Tell the caller of a Retry-After, and stop the SDK retrying a 429 that says the
    account has no credit left (the SDK obeys a server's `x-should-retry`)."""
    if response.status_code < 400:
        return
    call = _CALL.get()
    if response.status_code == 429:
        await response.aread()
        if _error_code(response) == "insufficient_quota":
            response.headers["x-should-retry"] = "false"
            return
    if call is not None and call.on_retry_after is not None:
        after = parse_retry_after(response.headers)
        if after is not None:
            call.on_retry_after(after)


def _error_code(response: Any) -> str | None:
    try:
        err = response.json().get("error") or {}
        return (err.get("code") or err.get("type")) if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        return None


def _api_error(e: Exception, attempts: int) -> ApiError:
    """The SDK's exception as one `ApiError` line: status, code and message, never the request."""
    import openai

    if isinstance(e, ApiError):
        return e
    if isinstance(e, openai.APITimeoutError):
        return ApiError("timeout (no answer in time)", retryable=True, attempts=attempts)
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return ApiError(f"connection failed ({type(cause).__name__}: {cause})", retryable=True, attempts=attempts)
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        code = (err.get("code") or err.get("type")) if isinstance(err, dict) else None
        message = str(err.get("message") or "") if isinstance(err, dict) else str(err or "")
        text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message[:200]}" if message else "")
        if status == 429 and code == "insufficient_quota":
            return ApiError(text, status=status, fatal=True, attempts=attempts)
        return ApiError(
            text,
            status=status,
            retryable=status in RETRYABLE_STATUS,
            fatal=status in FATAL_STATUS,
            retry_after=parse_retry_after(e.response.headers),
            attempts=attempts,
        )
    if isinstance(e, openai.OpenAIError):
        return ApiError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", attempts=attempts)
    raise e


class _Cancelled(Exception):
    pass


async def _next_item(agen: AsyncIterator[T], cancel: threading.Event | None) -> T:
    if cancel is None:
        return await agen.__anext__()
    step = asyncio.ensure_future(agen.__anext__())
    while True:
        done, _ = await asyncio.wait({step}, timeout=0.1)
        if done:
            return step.result()
        if cancel.is_set():  # stop waiting (e.g. on a busy server's first token): the stream is closed next
            step.cancel()
            try:
                await step
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the cancellation, or what it cut short
                pass
            raise _Cancelled


class LoopThread:
    """An asyncio event loop in a daemon thread, for sync callers of async clients."""

    def __init__(self, name: str = "mi-llm-openai"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result (its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T], cancel: threading.Event | None = None) -> Iterator[T]:
        """An async iterator's items, one by one; closing this closes it. Setting `cancel`
        ends the iteration within a tenth of a second, also while an item is awaited."""
        try:
            while True:
                try:
                    yield self.run(_next_item(agen, cancel))
                except (StopAsyncIteration, _Cancelled):
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                self.run(aclose())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()
