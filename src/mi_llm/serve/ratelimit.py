"""Per-client rate limits: a token bucket per client (API key, or address without a key)."""

from __future__ import annotations

import threading
import time


class TokenBucketLimiter:
    """`rate_per_minute` requests a minute on average, up to `burst` at once; 0 turns it off."""

    def __init__(self, rate_per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate = max(0.0, float(rate_per_minute)) / 60.0
        self.burst = max(1, int(burst))
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str, now: float | None = None) -> float:
        """0.0 when the request may go ahead, else the seconds to wait before retrying."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_clients:  # forget the longest idle clients
                for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: self.max_clients // 10]:
                    del self._buckets[k]
        return wait
