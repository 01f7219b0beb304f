"""The OpenAI-compatible server, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.serve.conftest import KEY, BlockingEngine, RecordingEngine, openai_client


def test_plain_and_streaming_completion_with_openai_client(start_server):
    server, engine, _ = start_server(api_key=KEY)
    client = openai_client(server)
    r = client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "I walk every day now"}])
    assert r.choices[0].message.content == "You said: I walk every day now"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "echo-test" and r.usage.completion_tokens == 7
    assert r.model_extra["mi_llm"]["safety"] == {"crisis": False, "category": "none", "level": "none"}
    # The MI system prompt is added when the client sends none.
    assert engine.calls[-1][0]["role"] == "system" and "Motivational Interviewing" in engine.calls[-1][0]["content"]

    stream = client.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 5 and "".join(pieces) == "You said: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    models = client.models.list()
    assert [m.id for m in models.data] == ["echo-test"]


def test_sse_wire_format(start_server):
    server, _, _ = start_server()
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_auth_required_when_key_set(start_server):
    server, _, _ = start_server(api_key=KEY)
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, key="wrong-key-000").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    # The page itself loads without a key (it asks for one); its API calls need the key.
    assert httpx.get(server.url + "/").status_code == 200


def test_refuses_to_bind_beyond_localhost_without_key():
    r = subprocess.run(
        [sys.executable, "-m", "mi_llm", "serve", "--host", "0.0.0.0", "--backend", "echo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("refusing to listen on 0.0.0.0 without an API key")
    assert "Traceback" not in r.stderr


def test_request_size_and_max_tokens_limits(start_server):
    server, _, _ = start_server(max_request_bytes=2000, max_tokens_limit=64)
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]

    def chunked():  # no content-length: the limit applies to the bytes as they arrive
        body = json.dumps(big).encode()
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    r = httpx.post(server.url + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError, match="over this server's limit of 64"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=65)
    assert client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=64
    ).choices
    with pytest.raises(openai.BadRequestError, match="last message must be a user message"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        )
    r = httpx.post(
        server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


def test_rate_limit_per_client(start_server):
    server, _, _ = start_server(rate_per_minute=6, rate_burst=2)
    client = openai_client(server)
    for _ in range(2):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_queue_full_answers_503(start_server):
    engine = BlockingEngine()
    server, _, _ = start_server(engine=engine, max_queue=1)

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as c:
            body = {"messages": [{"role": "user", "content": "first"}]}
            first = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            while not engine.started.is_set():
                await asyncio.sleep(0.01)
            second = await c.post("/v1/chat/completions", json=body)
            engine.release.set()
            return (await first).status_code, second

    status1, second = asyncio.run(scenario())
    assert status1 == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "5"


def test_concurrent_streams_each_get_their_own_reply(start_server):
    server, engine, _ = start_server(engine=RecordingEngine(delay=0.002), rate_burst=100)

    async def one(c: httpx.AsyncClient, i: int) -> str:
        body = {"messages": [{"role": "user", "content": f"client {i} says hello"}], "stream": True}
        text = ""
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    ev = json.loads(line[6:])
                    if ev["choices"]:
                        text += ev["choices"][0]["delta"].get("content", "")
        return text

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(*(one(c, i) for i in range(20)))

    texts = asyncio.run(run())
    assert texts == [f"You said: client {i} says hello" for i in range(20)]
    assert len(engine.calls) == 20


def test_client_disconnect_cancels_generation(start_server):
    engine = RecordingEngine(delay=0.05)
    server, _, _ = start_server(engine=engine)
    body = {"messages": [{"role": "user", "content": " ".join(["word"] * 200)}], "stream": True, "max_tokens": 300}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content": "You"' in line:
                break  # leave after the first word
    deadline = time.monotonic() + 10
    while not engine.finishes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.finishes == ["cancelled"]


def test_session_persists_across_restart(start_server, tmp_path):
    db = tmp_path / "persist.sqlite3"
    server, _, _ = start_server(db=db, api_key=KEY)
    client = openai_client(server)
    for text in ("I smoke a pack a day", "I want to cut down"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}], extra_body={"session_id": "alice-1"}
        )
    server.stop()

    server2, engine2, _ = start_server(db=db, api_key=KEY)  # a new process would see the same file
    client2 = openai_client(server2)
    r = client2.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "maybe next week"}], extra_headers={"X-Session-Id": "alice-1"}
    )
    assert r.model_extra["mi_llm"]["session_id"] == "alice-1"
    seen = engine2.calls[-1]
    assert [m["role"] for m in seen] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert seen[1]["content"] == "I smoke a pack a day" and seen[-1]["content"] == "maybe next week"
    hist = httpx.get(server2.url + "/v1/sessions/alice-1", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert len(hist["messages"]) == 6 and hist["session"]["flagged"] is False
    # A key this server does not know is refused (another owner's key: test_security.py).
    assert (
        httpx.delete(server2.url + "/v1/sessions/alice-1", headers={"Authorization": "Bearer other-key-99"}).status_code
        == 401
    )


def test_sessions_are_per_key(start_server, tmp_path):
    db = tmp_path / "keys.sqlite3"
    server, _, _ = start_server(db=db, api_key=KEY)
    openai_client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"session_id": "shared-name"}
    )
    server.stop()
    server2, _, _ = start_server(db=db, api_key="another-key-456")
    with pytest.raises(openai.NotFoundError):
        openai_client(server2, key="another-key-456").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"session_id": "shared-name"}
        )


def test_crisis_message_gets_safe_response_and_flags_session(start_server):
    server, engine, store = start_server()
    client = openai_client(server, key=None)
    r = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "活着没意思，我想一了百了"}],
        extra_body={"session_id": "s-crisis"},
    )
    text = r.choices[0].message.content
    assert "400-161-9995" in text and "010-82951332" in text
    assert r.model_extra["mi_llm"]["safety"] == {"crisis": True, "category": "suicide", "level": "high"}
    assert engine.calls == []  # the model never saw it
    session = store.get("s-crisis", "local")
    assert session.flagged and session.flag_category == "suicide"
    assert store.events("s-crisis")[0]["rule"].startswith("zh.suicide")

    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "I don't see the point of going on"}], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "988" in streamed and engine.calls == []


@pytest.mark.parametrize(
    "text",
    [
        "饿死了，先吃饭",
        "笑死我了",
        "this diet is murder",
        "I am dying for a smoke",
        "my feet are killing me",
        "I'm just killing time",
    ],
)
def test_idioms_reach_the_model(start_server, text):
    server, engine, store = start_server()
    r = openai_client(server, key=None).chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], extra_body={"session_id": "s-idiom"}
    )
    assert r.choices[0].message.content == "You said: " + text
    assert r.model_extra["mi_llm"]["safety"]["crisis"] is False
    assert not store.get("s-idiom", "local").flagged


@pytest.mark.parametrize("log_text", [False, True])
def test_no_conversation_text_in_logs_by_default(start_server, caplog, log_text):
    caplog.set_level(logging.DEBUG)
    server, _, _ = start_server(log_text=log_text)
    client = openai_client(server, key=None)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "zebra-marker quit smoking"}])
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "zebra-marker I want to kill myself"}],
        extra_body={"session_id": "who-am-i"},
    )
    # What the server process logs (the client's own debug logs are not the server's).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("mi_llm", "uvicorn")))
    assert "request chatcmpl-" in logged and "safety: crisis response sent" in logged
    assert ("zebra-marker" in logged) is log_text
    assert "who-am-i" not in logged  # session ids are logged as hashes


def test_web_page_is_self_contained(start_server):
    server, _, _ = start_server()
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no external CDN
    for asset in ("/static/app.js", "/static/style.css"):
        r = httpx.get(server.url + asset)
        assert r.status_code == 200 and "https://" not in r.text


def test_flagged_sessions_are_listed_without_text(start_server, tmp_path):
    db = tmp_path / "flags.sqlite3"
    server, _, _ = start_server(db=db)
    openai_client(server, key=None).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "quokka-marker my partner threatened to kill me"}],
        extra_body={"session_id": "flag-me"},
    )
    r = subprocess.run(
        [sys.executable, "-m", "mi_llm", "safety", "flagged", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "flag-me" in out and "abuse" in out and "quokka" not in out
