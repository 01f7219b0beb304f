"""Client-side rate limits (requests and tokens per minute) and retry back-off."""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")

MAX_RETRY_AFTER_S = 600.0


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A rough token count for rate limiting before the server tells the real one:
    about one token per CJK character and one per four other characters."""
    total = 0
    for m in messages:
        text = m.get("content", "")
        cjk = len(_CJK.findall(text))
        total += cjk + (len(text) - cjk + 3) // 4 + 4
    return total + 2


@dataclass
class _Slot:
    t: float
    tokens: int


class RateLimiter:
    """Sliding-window limits over `window_s` (60 s: per minute). A request is let through
    when the window holds fewer than `rpm` requests and its tokens fit under `tpm`
    (a request bigger than `tpm` alone goes through on an empty window). The token
    reservation is an estimate; `settle` replaces it with the real count. `pause` stops
    everyone, e.g. after a 429 with Retry-After."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self._clock, self._sleep = clock, sleep
        self._slots: deque[_Slot] = deque()
        self._lock = asyncio.Lock()
        self.paused_until = 0.0
        self.waited_s = 0.0  # total time requests spent waiting here

    def _prune(self, now: float) -> None:
        while self._slots and self._slots[0].t <= now - self.window_s:
            self._slots.popleft()

    def _wait_needed(self, now: float, tokens: int) -> float:
        wait = self.paused_until - now
        if self.rpm and len(self._slots) >= self.rpm:
            wait = max(wait, self._slots[len(self._slots) - self.rpm].t + self.window_s - now)
        if self.tpm and self._slots:
            excess = sum(s.tokens for s in self._slots) + tokens - self.tpm
            if excess > 0:
                freed = 0
                for s in self._slots:
                    freed += s.tokens
                    if freed >= excess or s is self._slots[-1]:
                        wait = max(wait, s.t + self.window_s - now)
                        break
        return wait

    async def acquire(self, tokens: int) -> _Slot:
        async with self._lock:
            while True:
                now = self._clock()
                self._prune(now)
                wait = self._wait_needed(now, tokens)
                if wait <= 0:
                    slot = _Slot(now, tokens)
                    self._slots.append(slot)
                    return slot
                self.waited_s += wait
                await self._sleep(wait + 1e-3)

    def settle(self, slot: _Slot, tokens: int) -> None:
        slot.tokens = tokens

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock() + seconds)


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


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `attempt` (0-based): the server's Retry-After when it sent
    one (plus a little jitter so waiting clients do not return together), else exponential
    back-off with jitter, uniform in [b/2, b] where b = min(cap, base * 2**attempt)."""
    rng = rng or random
    if retry_after is not None:
        return retry_after + rng.uniform(0, min(1.0, 0.1 * retry_after + 0.05))
    b = min(cap_s, base_s * 2 ** attempt)
    return rng.uniform(b / 2, b)
