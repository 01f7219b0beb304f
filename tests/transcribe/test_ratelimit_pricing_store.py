from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from mi_llm.errors import InputError, MiLlmError
from mi_llm.llm.openai_client import estimate_tokens, parse_retry_after
from mi_llm.transcribe.pricing import DEFAULT_PRICES, load_prices
from mi_llm.transcribe.ratelimit import RateLimiter
from mi_llm.transcribe.store import ResultStore
from tests.transcribe.conftest import make_dialogue


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s


def test_rpm_window_spaces_requests():
    clock = FakeClock()
    lim = RateLimiter(rpm=3, window_s=60, clock=clock, sleep=clock.sleep)

    async def go():
        return [(await lim.acquire(1), clock.t)[1] for _ in range(7)]

    times = asyncio.run(go())
    assert times[:3] == [1000.0] * 3
    assert 1060 <= times[3] < 1060.1 and times[4] == times[3] and times[5] == times[3]
    assert 1120 <= times[6] < 1120.2


def test_tpm_counts_reservations_then_real_usage():
    clock = FakeClock()
    lim = RateLimiter(tpm=1000, window_s=60, clock=clock, sleep=clock.sleep)

    async def go():
        a = await lim.acquire(600)
        lim.settle(a, 100)  # the server said the call used far less than reserved
        await lim.acquire(800)  # 100 + 800 fits
        t1 = clock.t
        await lim.acquire(500)  # 900 + 500 does not fit: waits until the 800 slot leaves the window
        return t1, clock.t

    t1, t2 = asyncio.run(go())
    assert t1 == 1000.0 and 1060 <= t2 < 1060.1
    # a request bigger than the whole budget still goes through on an empty window
    lim2 = RateLimiter(tpm=10, clock=clock, sleep=clock.sleep)
    asyncio.run(lim2.acquire(50))


def test_pause_stops_everyone():
    clock = FakeClock()
    lim = RateLimiter(clock=clock, sleep=clock.sleep)
    lim.pause(5)
    asyncio.run(lim.acquire(1))
    assert clock.t >= 1005 and lim.waited_s >= 5


def test_retry_after_parsing():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None and parse_retry_after({"Retry-After": "soon"}) is None
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= parse_retry_after({"Retry-After": format_datetime(when, usegmt=True)}) <= 31


def test_estimate_tokens_counts_cjk_per_character():
    en = estimate_tokens([{"role": "user", "content": "a" * 400}])
    zh = estimate_tokens([{"role": "user", "content": "好" * 400}])
    assert 100 <= en <= 110 and 400 <= zh <= 410


def test_prices_lookup_file_and_local(tmp_path):
    t = load_prices()
    assert t.lookup("gpt-4o-2024-08-06") is DEFAULT_PRICES["gpt-4o"]
    assert t.lookup("gpt-4o-mini-2024-07-18") is DEFAULT_PRICES["gpt-4o-mini"]
    assert t.lookup("openai/gpt-4.1") is DEFAULT_PRICES["gpt-4.1"]
    assert t.cost("openai", "my-model", 10, 10) is None  # unknown: not free
    assert t.cost("hf", "gemma-3-270m", 10**6, 10**6) == 0.0
    assert t.cost("openai", "gpt-4o", 1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    f = tmp_path / "p.yaml"
    f.write_text("models:\n  my-model: {input: 1.0, output: 2.0}\n  gpt-4o: {input: 5, output: 15}\n")
    t = load_prices(f)
    assert t.cost("openai", "my-model", 10**6, 10**6) == 3.0 and t.lookup("gpt-4o").input == 5
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"m": {"input": 1}}))
    with pytest.raises(InputError, match="output"):
        load_prices(j)
    with pytest.raises(MiLlmError, match="no such price file"):
        load_prices(tmp_path / "none.yaml")


def test_store_resumes_and_locks(tmp_path):
    out = tmp_path / "o.jsonl"
    with ResultStore(out) as s:
        s.append_ok(make_dialogue("a"))
        s.append_failure({"id": "b", "kind": "validation", "reason": "x"})
        with pytest.raises(MiLlmError, match="another mi-llm transcribe"):
            ResultStore(out).open()
        with pytest.raises(RuntimeError, match="twice"):
            s.append_ok(make_dialogue("a"))
    with open(out, "ab") as f:
        f.write(b'{"id": "half')
    with ResultStore(out) as s:
        assert s.done == {"a"} and set(s.failed) == {"b"} and s.repaired_bytes > 0
        s.forget_failures({"b"})
        assert not s.failed and not s.failures.exists()
    out.write_text(out.read_text() * 2)
    with pytest.raises(InputError, match="repeats line 1"):
        ResultStore(out).open()
