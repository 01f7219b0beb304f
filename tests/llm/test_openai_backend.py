"""The OpenAI-compatible backend against a local fake server: answers, retries, errors."""

from __future__ import annotations

import time

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends import Finish, get_backend, preset
from tests.llm.fake_openai import FakeOpenAI

CONVS = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"hello {i}"}] for i in range(5)]


def backend(url: str, **kw):
    return get_backend("openai", "served-model", base_url=url, **kw)


def test_plain_answers_in_order_with_usage() -> None:
    with FakeOpenAI() as srv:
        b = backend(srv.base_url, concurrency=3)
        out = b.generate(CONVS, preset("greedy", max_new_tokens=20))
    assert [c.text for c in out] == [f"echo: hello {i}" for i in range(5)]
    assert all(c.completion_tokens == 3 and c.prompt_tokens > 0 and c.finish_reason == "stop" for c in out)
    body = srv.requests[0]["body"]
    assert body["model"] == "served-model" and body["max_tokens"] == 20 and body["temperature"] == 0.0
    assert body["seed"] == 42 and "top_p" not in body
    assert srv.requests[0]["auth"] == "Bearer EMPTY"  # local server, no key set


def test_sampling_settings_and_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeOpenAI() as srv:
        b = backend(
            srv.base_url, response_format={"type": "json_object"}, extra_body={"chat_template_kwargs": {"x": 1}}
        )
        b.generate(CONVS[:1], preset("llamafactory"))
    body = srv.requests[0]["body"]
    assert body["temperature"] == 0.95 and body["top_p"] == 0.7 and body["top_k"] == 50 and body["max_tokens"] == 1024
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"x": 1}
    assert srv.requests[0]["auth"] == "Bearer sk-test"


@pytest.mark.parametrize("failures", [[429], [500, 503], [429, 502, 429]])
def test_transient_errors_are_retried(failures: list[int]) -> None:
    with FakeOpenAI(failures=failures) as srv:
        b = backend(srv.base_url, concurrency=1)
        [c] = b.generate(CONVS[:1], preset("greedy"))
    assert c.text == "echo: hello 0"
    assert len(srv.requests) == len(failures) + 1
    assert b.retries == len(failures)


def test_retry_after_is_honoured() -> None:
    with FakeOpenAI(failures=[429], retry_after="0.3") as srv:
        b = backend(srv.base_url)
        t0 = time.monotonic()
        b.generate(CONVS[:1], preset("greedy"))
    assert time.monotonic() - t0 >= 0.3


def test_gives_up_after_max_retries() -> None:
    with FakeOpenAI(failures=[500] * 10) as srv:
        b = backend(srv.base_url, max_retries=2)
        with pytest.raises(MiLlmError, match="giving up after 3 tries.*500"):
            b.generate(CONVS[:1], preset("greedy"))
    assert len(srv.requests) == 3


def test_client_errors_fail_at_once() -> None:
    with FakeOpenAI(failures=[400]) as srv:
        b = backend(srv.base_url)
        with pytest.raises(MiLlmError, match="HTTP 400"):
            b.generate(CONVS[:1], preset("greedy"))
    assert len(srv.requests) == 1


def test_remote_server_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MiLlmError, match="OPENAI_API_KEY"):
        get_backend("openai", "gpt-4o", base_url="https://api.example.com/v1")


def test_adapter_is_rejected() -> None:
    with pytest.raises(MiLlmError, match="adapter"):
        get_backend("openai", "m", adapter="x", base_url="http://127.0.0.1:1/v1")


def test_stream_chat_sends_the_server_deltas_then_the_usage() -> None:
    with FakeOpenAI() as srv:
        b = backend(srv.base_url)
        items = list(b.stream_chat(CONVS[0], preset("greedy", max_new_tokens=20)))
        b.close()
    pieces, finish = items[:-1], items[-1]
    assert pieces == ["echo:", " hello", " 0"]
    assert isinstance(finish, Finish) and finish.reason == "stop" and finish.completion_tokens == 3
    body = srv.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 20


def test_stream_chat_cancel_closes_the_stream() -> None:
    import threading

    cancel = threading.Event()
    with FakeOpenAI(words=200, chunk_delay=0.01) as srv:
        b = backend(srv.base_url)
        items = []
        for item in b.stream_chat(CONVS[0], preset("greedy"), cancel):
            items.append(item)
            if len(items) == 3:
                cancel.set()
        b.close()
        for _ in range(200):  # the server notices the closed connection at its next write
            if srv.streams_closed_early:
                break
            time.sleep(0.02)
    assert items[-1].reason == "cancelled" and len(items) < 10
    assert srv.streams_closed_early == 1


def test_stream_chat_errors_are_one_line() -> None:
    with FakeOpenAI(failures=[400]) as srv:
        b = backend(srv.base_url)
        with pytest.raises(MiLlmError, match="HTTP 400"):
            list(b.stream_chat(CONVS[0], preset("greedy")))
        b.close()
