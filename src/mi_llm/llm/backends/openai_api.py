"""Any OpenAI-compatible chat server: OpenAI and GPT-4-class APIs, vLLM, llama.cpp server, Ollama.

Requests go through the shared client (`mi_llm.llm.openai_client`: the openai SDK's
AsyncOpenAI, on an event loop of this backend's own), `concurrency` at a time; 429, 5xx,
timeouts and dropped connections are retried by the SDK (`max_retries`, exponential back-off,
Retry-After honoured); other errors (bad key, unknown model, bad request) fail at once.
`stream_chat` streams the server's deltas (`stream=True`); cancelling closes the connection.

Conversation text leaves the machine here: only when the user chose this backend.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import (
    BACKENDS,
    Backend,
    Completion,
    Finish,
    GenerationConfig,
    LeadingSpaceTrimmer,
    Messages,
)
from mi_llm.llm.openai_client import ApiError, ChatResult, LoopThread, OpenAICompatClient, estimate_tokens

log = logging.getLogger(__name__)

_SDK_MAX_TOKENS = ("max_tokens", "max_completion_tokens")


@BACKENDS.register("openai")
class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: Any,
        adapter: str | Path | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 120.0,
        response_format: dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
        max_tokens_param: str = "max_tokens",
        **_: Any,
    ):
        if adapter:
            raise MiLlmError(
                "--adapter does not apply to the openai backend: serve the adapter and name it with --model"
            )
        self.model = str(model)
        self.concurrency = max(1, int(concurrency))
        self.stream_concurrency = self.concurrency  # the server batches; we only wait on it
        self.client = OpenAICompatClient(
            base_url, api_key, timeout_s=timeout, max_retries=max_retries, max_connections=self.concurrency
        )
        self.host = self.client.host
        self.response_format = response_format
        self.extra_body = extra_body or {}
        self.max_tokens_param = max_tokens_param
        self.retries = 0  # total retries so far (for reports)
        self._loop = LoopThread()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "base_url": self.client.base_url,
            "concurrency": self.concurrency,
            "max_retries": self.client.max_retries,
            "response_format": self.response_format,
        }

    def _request(self, messages: Messages, config: GenerationConfig) -> dict[str, Any]:
        """The SDK's arguments of one chat completion; what OpenAI's API lacks goes in extra_body."""
        req: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        extra = dict(self.extra_body)
        (req if self.max_tokens_param in _SDK_MAX_TOKENS else extra)[self.max_tokens_param] = config.max_new_tokens
        if config.do_sample:
            req["temperature"] = config.temperature
            req["top_p"] = config.top_p
            if config.top_k > 0:  # not in OpenAI's API; vLLM, llama.cpp and Ollama read it
                extra.setdefault("top_k", config.top_k)
        else:
            req["temperature"] = 0.0
        if config.repetition_penalty != 1.0:
            extra.setdefault("repetition_penalty", config.repetition_penalty)
        if config.seed is not None:
            req["seed"] = config.seed
        if config.stop:
            req["stop"] = list(config.stop)
        if self.response_format:
            req["response_format"] = self.response_format
        if messages and messages[-1]["role"] == "assistant":
            # the reply goes on from the last assistant message (a forced strategy tag): vLLM's
            # and SGLang's chat option; a server without it answers afresh
            extra.setdefault("continue_final_message", True)
            extra.setdefault("add_generation_prompt", False)
        if extra:
            req["extra_body"] = extra
        return req

    def _error(self, e: ApiError) -> ApiError:
        """The error as one line naming the server (and the tries), its status kept for callers."""
        text = f"{self.host}: giving up after {e.attempts} tries: {e}" if e.retryable else f"{self.host}: {e}"
        return ApiError(
            text,
            status=e.status,
            retryable=e.retryable,
            fatal=e.fatal,
            retry_after=e.retry_after,
            attempts=e.attempts,
        )

    def model_ids(self) -> list[str]:
        """The models the server lists."""
        try:
            return self._loop.run(self.client.model_ids())
        except ApiError as e:
            raise self._error(e) from None

    def _completion(self, res: ChatResult) -> Completion:
        self.retries += max(0, res.attempts - 1)
        return Completion(
            text=res.text.strip(),
            prompt_tokens=res.prompt_tokens,
            completion_tokens=res.completion_tokens,
            finish_reason=res.finish_reason,
        )

    async def _complete_all(
        self, batch: Sequence[Messages], config: GenerationConfig
    ) -> list[ChatResult | BaseException]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(messages: Messages) -> ChatResult:
            async with gate:
                return await self.client.complete(self._request(messages, config))

        return await asyncio.gather(*(one(m) for m in batch), return_exceptions=True)

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        outs = self.generate_settled(batch, config)
        for out in outs:
            if isinstance(out, Exception):
                raise out
        return outs  # type: ignore[return-value]

    def generate_settled(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion | Exception]:
        """Each conversation's completion, or the error its own request ended with after the
        client's retries: one conversation's failure does not cost the others theirs."""
        if not self.client.is_local:
            log.info("sending %d conversation(s) to %s", len(batch), self.host)
        outs = self._loop.run(self._complete_all(batch, config))
        settled: list[Completion | Exception] = []
        for out in outs:  # every request has ended; count the retries of the failed ones too
            if isinstance(out, ApiError):
                self.retries += max(0, out.attempts - 1)
                settled.append(self._error(out))
            elif isinstance(out, Exception):
                settled.append(out)
            elif isinstance(out, BaseException):  # cancelled, interrupted: not one conversation's failure
                raise out
            else:
                settled.append(self._completion(out))
        return settled

    def stream_chat(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        if not self.client.is_local:
            log.info("sending a conversation to %s", self.host)
        lead = LeadingSpaceTrimmer()
        pieces = 0
        items = self._loop.iterate(self.client.stream(self._request(messages, config)), cancel)
        try:
            for item in items:
                if isinstance(item, ChatResult):
                    self.retries += max(0, item.attempts - 1)
                    yield Finish(item.finish_reason or "stop", item.prompt_tokens, item.completion_tokens)
                    return
                if cancel is not None and cancel.is_set():  # closing the stream ends it on the server
                    yield Finish("cancelled", estimate_tokens(list(messages)), pieces)
                    return
                pieces += 1
                text = lead.feed(item)
                if text:
                    yield text
        except ApiError as e:
            raise self._error(e) from None
        finally:
            items.close()  # type: ignore[attr-defined]
        if cancel is not None and cancel.is_set():  # cancelled while waiting for the server
            yield Finish("cancelled", estimate_tokens(list(messages)), pieces)
            return
        raise MiLlmError(f"{self.host}: the stream ended without a finish")

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self.client.aclose())
            self._loop.close()
