"""Client-side rate limits: requests and tokens per minute, and a pause for everyone when a
server sends Retry-After. (Retries and their back-off are the openai SDK's, in
`mi_llm.llm.openai_client`.)"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["RateLimiter"]


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
