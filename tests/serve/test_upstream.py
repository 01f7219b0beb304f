"""`mi-llm serve --upstream URL`: mi-llm in front of another OpenAI-compatible server.

The upstream is our own server in-process (an echo engine: no model) or the scripted
`tests.llm.fake_openai.FakeOpenAI` (failures on demand). The front server adds the MI
system prompt, the safety layer, sessions and auth; the upstream only generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from mi_llm.errors import MiLlmError
from mi_llm.prompts import load_prompt
from mi_llm.serve.engine import EchoEngine, upstream_engine, upstream_url
from tests.llm.fake_openai import FakeOpenAI
from tests.serve.conftest import KEY, RecordingEngine, openai_client

UPSTREAM_KEY = "upstream-key-98765"


def _front(start_server, upstream: str, **engine_opts):
    engine = upstream_engine(upstream, **engine_opts)
    server, _, store = start_server(engine=engine, api_key=KEY)
    return server, engine, store


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _sse(lines) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def test_streams_through_with_the_mi_prompt_and_sessions(start_server):
    back, back_engine, _ = start_server(engine=RecordingEngine(), api_key=UPSTREAM_KEY)
    server, engine, store = _front(start_server, back.url, api_key=UPSTREAM_KEY)
    assert engine.model_id == "echo-test"  # the one model the upstream lists
    assert engine.concurrency > 1  # the upstream batches: many streams in flight at once
    client = openai_client(server)
    pieces = []
    for chunk in client.chat.completions.create(
        model="x",
        stream=True,
        messages=[{"role": "user", "content": "I want to drink less beer"}],
        extra_body={"session_id": "bob-1", "language": "en"},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "You said: I want to drink less beer"
    assert len(pieces) > 3  # streamed through piece by piece, not as one block
    seen = back_engine.calls[-1]  # what the upstream got: mi-llm's MI system prompt first
    assert seen[0] == {"role": "system", "content": load_prompt("system", "en")}
    assert seen[-1] == {"role": "user", "content": "I want to drink less beer"}
    # the next turn sends only the new message: the front server keeps the history
    r = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "maybe wine"}], extra_body={"session_id": "bob-1"}
    )
    assert r.choices[0].message.content == "You said: maybe wine"
    assert [m["role"] for m in back_engine.calls[-1]] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in store.history("bob-1")][-1] == "You said: maybe wine"


def test_a_crisis_never_reaches_the_upstream(start_server):
    back, back_engine, _ = start_server(engine=RecordingEngine())
    server, _, _ = _front(start_server, back.url)
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers=_auth(),
        json={"messages": [{"role": "user", "content": "I want to kill myself tonight"}], "session_id": "c-1"},
    )
    assert r.status_code == 200 and r.json()["mi_llm"]["safety"]["crisis"] is True
    assert back_engine.calls == []


def test_upstream_errors_are_clear_and_leave_the_session_as_it_was(start_server):
    with FakeOpenAI(failures=[200, 500, 500]) as fake:  # one good turn, then two failures
        url = fake.base_url
        server, _, store = _front(start_server, url, model="up-model", max_retries=0)
        body = {"messages": [{"role": "user", "content": "first turn"}], "session_id": "s-1"}
        assert httpx.post(server.url + "/v1/chat/completions", headers=_auth(), json=body).status_code == 200
        before = store.history("s-1")
        assert len(before) == 2
        r = httpx.post(
            server.url + "/v1/chat/completions",
            headers=_auth(),
            json={"messages": [{"role": "user", "content": "second turn"}], "session_id": "s-1"},
        )
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "upstream_error" and "HTTP 500" in err["message"] and "127.0.0.1" in err["message"]
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            headers=_auth(),
            json={"messages": [{"role": "user", "content": "third"}], "session_id": "s-1", "stream": True},
        ) as resp:
            events = _sse(resp.iter_lines())
        assert events[-1]["error"]["code"] == "upstream_error" and "HTTP 500" in events[-1]["error"]["message"]
        assert store.history("s-1") == before  # neither failed turn was stored


def test_a_busy_upstream_gives_503_with_retry_after(start_server):
    with FakeOpenAI(failures=[429], retry_after="7") as fake:
        url = fake.base_url
        server, _, _ = _front(start_server, url, model="up-model", max_retries=0)
        r = httpx.post(
            server.url + "/v1/chat/completions", headers=_auth(), json={"messages": [{"role": "user", "content": "hi"}]}
        )
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == "upstream_error"


def test_a_failed_try_is_retried(start_server):
    with FakeOpenAI(failures=[503]) as fake:
        url = fake.base_url
        server, _, _ = _front(start_server, url, model="up-model", max_retries=1)
        r = httpx.post(
            server.url + "/v1/chat/completions", headers=_auth(), json={"messages": [{"role": "user", "content": "hi"}]}
        )
    assert r.status_code == 200 and len(fake.requests) == 2


def test_wrong_upstream_key_is_a_clear_error(start_server):
    back, _, _ = start_server(engine=RecordingEngine(), api_key=UPSTREAM_KEY)
    server, _, _ = _front(start_server, back.url, model="echo-test", api_key="not-the-key-1")
    r = httpx.post(
        server.url + "/v1/chat/completions", headers=_auth(), json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 502 and "HTTP 401" in r.json()["error"]["message"]


@pytest.mark.parametrize("wait_first", [False, True])
def test_client_disconnect_cancels_the_upstream_stream(start_server, wait_first):
    """Leaving after the first word closes the upstream stream; so does leaving while the
    upstream has not sent anything yet (its queue is busy)."""

    class Slow(RecordingEngine):
        def stream(self, messages, config, cancel=None):
            if wait_first:
                for _ in range(100):  # 5 s before the first word, unless cancelled
                    if cancel is not None and cancel.is_set():
                        break
                    time.sleep(0.05)
            yield from super().stream(messages, config, cancel)

    back, back_engine, _ = start_server(engine=Slow(delay=0.05))
    server, _, _ = _front(start_server, back.url)
    body = {"messages": [{"role": "user", "content": " ".join(["word"] * 200)}], "stream": True, "max_tokens": 300}
    t0 = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=_auth(), json=body) as r:
        for line in r.iter_lines():
            if wait_first or '"content": "You"' in line:
                break  # leave after the role chunk (nothing generated yet) or the first word
    deadline = time.monotonic() + 10
    while not back_engine.finishes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert back_engine.finishes == ["cancelled"]
    assert time.monotonic() - t0 < 4  # not after the upstream's 5 s wait


def test_model_discovery_and_url_checks():
    assert upstream_url("http://gpu:8000") == "http://gpu:8000/v1"
    assert upstream_url("https://h.example/openai/v1/") == "https://h.example/openai/v1"
    with pytest.raises(MiLlmError, match="--upstream"):
        upstream_url("gpu:8000")
    with FakeOpenAI() as fake, pytest.raises(MiLlmError, match="--upstream-model"):  # serves no model list
        upstream_engine(fake.base_url)


def test_serve_cli_checks_the_upstream_options(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MI_LLM_API_KEY", "NO_SUCH_KEY_VAR")}
    db = str(tmp_path / "s.sqlite3")
    cases = [
        (["--upstream", "http://127.0.0.1:9/v1", "--backend", "echo"], "--backend does not go with --upstream"),
        (["--upstream", "ftp://x"], "--upstream 'ftp://x': give the server's URL"),
        (["--upstream-model", "m"], "--upstream-model needs --upstream URL"),
        (["--upstream", "http://127.0.0.1:9/v1", "--upstream-key-env", "NO_SUCH_KEY_VAR"], "NO_SUCH_KEY_VAR"),
    ]
    for args, message in cases:
        r = subprocess.run(
            [sys.executable, "-m", "mi_llm", "serve", "--db", db, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "COLUMNS": "300"},
        )
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_many_streams_in_flight_at_once(start_server):
    """The front server runs as many upstream streams at once as its queue allows: 8 slow
    replies take about the time of one, not eight."""
    gate = threading.Barrier(8, timeout=10)

    class Together(EchoEngine):
        def stream(self, messages, config, cancel=None):
            gate.wait()  # every one of the 8 must be running at the same time
            yield from super().stream(messages, config, cancel)

    back, _, _ = start_server(engine=Together(model_id="t", concurrency=8))
    server, _, _ = _front(start_server, back.url)

    results: list[int] = []

    def one(i: int) -> None:
        r = httpx.post(
            server.url + "/v1/chat/completions",
            headers=_auth(),
            json={"messages": [{"role": "user", "content": f"hello {i}"}]},
            timeout=30,
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
