"""Any OpenAI-compatible chat server: OpenAI and GPT-4-class APIs, vLLM, llama.cpp server, Ollama.

Requests run concurrently (a thread pool, `concurrency` at a time); 429, 5xx, timeouts and
dropped connections are retried with exponential backoff and jitter (honouring
Retry-After); other errors (bad key, unknown model, bad request) fail at once.

Conversation text leaves the machine here: only when the user chose this backend.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages

log = logging.getLogger(__name__)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 120.0,
        response_format: dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
        max_tokens_param: str = "max_tokens",
        **_: Any,
    ):
        import openai

        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        host = urlparse(self.base_url).hostname if self.base_url else "api.openai.com"
        if not key:
            if host in _LOCAL_HOSTS:
                key = "EMPTY"  # local servers (vLLM, llama.cpp, Ollama) accept any key
            else:
                raise MiLlmError(f"the openai backend needs an API key for {host}: set OPENAI_API_KEY")
        self.host = host
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.response_format = response_format
        self.extra_body = extra_body or {}
        self.max_tokens_param = max_tokens_param
        # Our own retry loop below: the client's would retry silently and without our limits.
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)
        self._openai = openai
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.retries = 0  # total retries so far (for reports)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url or "https://api.openai.com/v1",
                "concurrency": self.concurrency, "max_retries": self.max_retries,
                "response_format": self.response_format}

    def _request(self, messages: Messages, config: GenerationConfig) -> dict[str, Any]:
        req: dict[str, Any] = {"model": self.model, "messages": messages, self.max_tokens_param: config.max_new_tokens}
        extra = dict(self.extra_body)
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
        if extra:
            req["extra_body"] = extra
        return req

    def complete(self, messages: Messages, config: GenerationConfig) -> Completion:
        """One chat completion, retried on transient failures."""
        oa = self._openai
        req = self._request(messages, config)
        attempt = 0
        while True:
            try:
                resp = self.client.chat.completions.create(**req)
                break
            except (oa.RateLimitError, oa.InternalServerError, oa.APITimeoutError, oa.APIConnectionError) as e:
                if attempt >= self.max_retries:
                    raise MiLlmError(f"{self.host}: giving up after {attempt + 1} tries: {_describe(e)}") from None
                delay = self._delay(attempt, e)
                log.warning("%s: %s; retry %d/%d in %.1f s", self.host, _describe(e), attempt + 1, self.max_retries, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
                attempt += 1
            except oa.APIStatusError as e:
                raise MiLlmError(f"{self.host}: {_describe(e)}") from None
        if not resp.choices:
            raise MiLlmError(f"{self.host}: the server returned no choices")
        choice = resp.choices[0]
        text = choice.message.content or ""
        usage = resp.usage
        return Completion(
            text=text.strip(),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            finish_reason=choice.finish_reason,
        )

    def _delay(self, attempt: int, err: Exception) -> float:
        """Exponential backoff with full jitter; a server's Retry-After wins when it says more."""
        base = min(self.max_backoff, self.backoff * (2**attempt))
        delay = base / 2 + self._rng.uniform(0, base / 2)
        resp = getattr(err, "response", None)
        after = resp.headers.get("retry-after") if resp is not None else None
        if after:
            try:
                delay = max(delay, min(self.max_backoff, float(after)))
            except ValueError:
                pass
        return delay

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        if self.host not in _LOCAL_HOSTS:
            log.info("sending %d conversation(s) to %s", len(batch), self.host)
        if len(batch) == 1 or self.concurrency == 1:
            return [self.complete(list(m), config) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch))) as pool:
            return list(pool.map(lambda m: self.complete(list(m), config), batch))

    def close(self) -> None:
        self.client.close()


def _describe(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    msg = getattr(e, "message", None) or str(e)
    return f"HTTP {status}: {msg}" if status else f"{type(e).__name__}: {msg}"
