"""The local server is safe from the browser and from other key holders: Host and
Content-Type checks, the safety layer over the whole history, a redacted access log, keys
kept out of argv, and sessions separated by owner."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mi_llm.errors import InputError, MiLlmError
from mi_llm.serve.api import redact_path, short_hash
from mi_llm.serve.auth import KeyRing, key_id, read_keys_file
from mi_llm.serve.hostguard import HostPolicy, parse_host
from mi_llm.serve.safety.classifier import default_classifier
from mi_llm.serve.safety.layer import SafetyLayer
from mi_llm.serve.sessions import SessionNotFound

CHAT = "/v1/chat/completions"
CRISIS = "I have been thinking about killing myself"


def _body(*texts: str, **extra) -> dict:
    """User/assistant turns alternating, the last one the user's."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"messages": msgs, **extra}


# ---------------------------------------------------------------- 1. Content-Type and Host


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "text/plain;charset=UTF-8"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {},
    ],
)
def test_body_not_declared_json_is_415_and_changes_nothing(start_server, headers):
    server, engine, store = start_server()
    # What a cross-site page can send without a preflight: a JSON text in a "simple" body.
    body = json.dumps(_body("hello", session_id="csrf-1")).encode()
    r = httpx.post(server.url + CHAT, content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert engine.calls == []
    with pytest.raises(SessionNotFound):
        store.get("csrf-1", "local")
    # The same body declared as JSON goes through.
    r = httpx.post(server.url + CHAT, content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and store.get("csrf-1", "local")


def test_foreign_host_header_is_refused(start_server):
    server, engine, store = start_server()
    port = server.port
    evil = {"Host": f"evil.example:{port}"}  # what a DNS-rebinding page's requests carry
    assert httpx.get(server.url + "/v1/models", headers=evil).status_code == 421
    assert httpx.get(server.url + "/", headers=evil).status_code == 421
    assert httpx.get(server.url + "/healthz", headers=evil).status_code == 421
    r = httpx.post(server.url + CHAT, json=_body("hi", session_id="rebound"), headers=evil)
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"
    assert engine.calls == []
    with pytest.raises(SessionNotFound):
        store.get("rebound", "local")
    for bad in (f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.evil.example:{port}", f"evil@127.0.0.1:{port}", ""):
        assert httpx.get(server.url + "/v1/models", headers={"Host": bad}).status_code in (400, 421), bad
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert httpx.get(server.url + "/v1/models", headers={"Host": good}).status_code == 200, good


def test_allowed_host_option(start_server):
    server, _, _ = start_server(allowed_hosts=["chat.example", "pinned.example:4443"])
    get = lambda host: httpx.get(server.url + "/v1/models", headers={"Host": host}).status_code  # noqa: E731
    assert get("chat.example") == 200 and get("chat.example:8443") == 200  # a bare NAME: any port
    assert get("pinned.example:4443") == 200 and get("pinned.example:4444") == 421
    assert get("other.example") == 421


def test_host_policy_rules():
    loop = HostPolicy("127.0.0.1")
    assert loop.allows("localhost:8000", ("127.0.0.1", 8000)) and loop.allows("[::1]:8000", ("::1", 8000))
    assert not loop.allows("localhost:8001", ("127.0.0.1", 8000)) and not loop.allows(None, ("127.0.0.1", 8000))
    assert loop.allows("localhost", ("127.0.0.1", 80))  # no port in Host = 80
    # A wildcard bind answers to the address a connection arrived on and to loopback names.
    wild = HostPolicy("0.0.0.0")
    assert wild.allows("192.0.2.7:8000", ("192.0.2.7", 8000)) and wild.allows("localhost:8000", ("127.0.0.1", 8000))
    assert not wild.allows("evil.example:8000", ("192.0.2.7", 8000))
    assert not wild.allows("192.0.2.8:8000", ("192.0.2.7", 8000))
    named = HostPolicy("box.lan")
    assert named.allows("box.lan:8000", ("192.0.2.7", 8000)) and not named.allows("localhost:8000", ("192.0.2.7", 8000))
    assert parse_host("[::1]:80") == ("::1", 80) and parse_host("Example.COM.") == ("example.com", None)
    assert parse_host("a b") is None and parse_host("x:notaport") is None and parse_host("u@h") is None
    for bad in ("a b", "*.example", "x:99999", ""):
        with pytest.raises(MiLlmError, match="--allowed-host"):
            HostPolicy("127.0.0.1", [bad])


def test_security_headers(start_server):
    server, _, _ = start_server()
    page = httpx.get(server.url + "/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    api = httpx.get(server.url + "/v1/models")
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["referrer-policy"] == "no-referrer"
    refused = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example"})
    assert refused.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------- 3. the safety layer reads the whole history


def test_crisis_in_an_earlier_user_message_gets_the_safe_response(start_server):
    server, engine, _ = start_server()
    body = _body("I want to walk more", "ok", CRISIS, "I hear you", "anyway, about walking")
    r = httpx.post(server.url + CHAT, json=body)
    assert r.status_code == 200
    assert r.json()["mi_llm"]["safety"] == {"crisis": True, "category": "suicide", "level": "high"}
    assert "988" in r.json()["choices"][0]["message"]["content"]
    assert engine.calls == []  # the model never saw the history with the crisis in it


def test_new_session_seeded_with_a_crisis_is_flagged_and_marked(start_server):
    server, engine, store = start_server()
    body = _body("I want to walk more", "ok", CRISIS, "I hear you", "anyway, about walking", session_id="seeded")
    r = httpx.post(server.url + CHAT, json=body)
    assert r.json()["mi_llm"]["safety"]["crisis"] is True and engine.calls == []
    s = store.get("seeded", "local")
    assert s.flagged and s.flag_category == "suicide"
    hist = store.history("seeded")
    assert [m.get("safety") for m in hist if m["role"] == "user"] == [None, "suicide", "suicide"]
    # The answered crisis does not trap the conversation: the next turn reaches the model.
    r = httpx.post(server.url + CHAT, json=_body("thank you, I called the line", session_id="seeded"))
    assert r.json()["mi_llm"]["safety"]["crisis"] is False and len(engine.calls) == 1


class CountingClassifier:
    def __init__(self):
        self.inner = default_classifier()
        self.texts: list[str] = []

    def classify(self, text, language=None):
        self.texts.append(text)
        return self.inner.classify(text, language)


def test_history_is_checked_once_and_rewrites_are_checked_again(start_server):
    clf = CountingClassifier()
    server, engine, _ = start_server(safety=SafetyLayer(classifier=clf))
    turns = ["I smoke a lot", "ok", "my kids mind it", "right", "I tried patches"]
    assert httpx.post(server.url + CHAT, json=_body(*turns)).status_code == 200
    assert sorted(clf.texts) == sorted(turns[0::2])  # every user message, once
    clf.texts.clear()
    turns += ["You said: I tried patches", "they itched"]
    httpx.post(server.url + CHAT, json=_body(*turns))
    assert clf.texts == ["they itched"]  # the history was checked already
    clf.texts.clear()
    # A client that rewrites its history is checked on what it rewrote.
    rewritten = [*turns[:2], CRISIS, *turns[3:], "You said: they itched", "and now?"]
    r = httpx.post(server.url + CHAT, json=_body(*rewritten))
    assert r.status_code == 200, r.text
    assert clf.texts == ["and now?", CRISIS]
    assert r.json()["mi_llm"]["safety"]["crisis"] is True and len(engine.calls) == 2


def test_checked_messages_are_per_owner_and_session(start_server):
    clf = CountingClassifier()
    server, _, _ = start_server(safety=SafetyLayer(classifier=clf))
    httpx.post(server.url + CHAT, json=_body("first", "ok", "second"))
    clf.texts.clear()
    httpx.post(server.url + CHAT, json=_body("first", "ok", "second", "ok", "third", session_id="fresh"))
    assert sorted(clf.texts) == ["first", "second", "third"]  # a new session's seed is checked in full


# ---------------------------------------------------------------- 4. access log


def test_access_log_shows_session_ids_as_hashes(start_server):
    server, _, _ = start_server(access_log=True)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        httpx.post(server.url + CHAT, json=_body("hi", session_id="secret-sid-42"))
        httpx.get(server.url + "/v1/sessions/secret-sid-42")
        httpx.delete(server.url + "/v1/sessions/secret-sid-42?why=secret-sid-42")
    finally:
        access.removeHandler(handler)
    lines = [handler.format(r) for r in records]
    assert len(lines) == 3, lines
    assert not any("secret-sid-42" in line for line in lines)
    assert sum(f"/v1/sessions/~{short_hash('secret-sid-42')}" in line for line in lines) == 2
    assert redact_path("/v1/sessions/abc/x?q=1") == f"/v1/sessions/~{short_hash('abc')}/x?…"


# ---------------------------------------------------------------- 6. keys and owners

ALICE, ALICE2, BOB = "alice-key-0001", "alice-key-0002", "bob-key-00003"


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_one_key_holder_cannot_touch_anothers_sessions(start_server):
    keys = {ALICE: "owner:alice", ALICE2: "owner:alice", BOB: "owner:bob"}
    server, engine, store = start_server(api_keys=keys)
    url = server.url
    r = httpx.post(url + CHAT, json=_body("I smoke a pack a day", session_id="alice-s"), headers=_auth(ALICE))
    assert r.status_code == 200
    before = httpx.get(url + "/v1/sessions/alice-s", headers=_auth(ALICE)).json()
    assert len(before["messages"]) == 2

    # Bob: reading, resetting, continuing alice's session all look like "no such session".
    for r in (
        httpx.get(url + "/v1/sessions/alice-s", headers=_auth(BOB)),
        httpx.delete(url + "/v1/sessions/alice-s", headers=_auth(BOB)),
        httpx.post(url + CHAT, json=_body("tell me what she said", session_id="alice-s"), headers=_auth(BOB)),
    ):
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text
    assert len(engine.calls) == 1  # bob's message never reached the model with alice's history
    assert httpx.get(url + "/v1/sessions/alice-s", headers=_auth(ALICE)).json() == before
    # A session that does not exist answers the same as another owner's.
    assert (
        httpx.get(url + "/v1/sessions/nobody", headers=_auth(BOB)).json()
        == httpx.get(url + "/v1/sessions/alice-s", headers=_auth(BOB)).json()
    )

    # Bob's own session is his; alice's second key (same owner) sees alice's.
    assert httpx.post(url + CHAT, json=_body("hello", session_id="bob-s"), headers=_auth(BOB)).status_code == 200
    assert httpx.get(url + "/v1/sessions/bob-s", headers=_auth(ALICE)).status_code == 404
    assert httpx.get(url + "/v1/sessions/alice-s", headers=_auth(ALICE2)).json() == before
    assert store.get("alice-s", "owner:alice").owner == "owner:alice" and store.get("bob-s", "owner:bob")


def _keys_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_keys_file(tmp_path):
    f = _keys_file(tmp_path / "keys", f"# team\nalice: {ALICE}\n\n  alice: {ALICE2}\nbob:   {BOB}\nbare-key-xyz:123\n")
    keys = read_keys_file(f)
    assert keys == {
        ALICE: "owner:alice",
        ALICE2: "owner:alice",
        BOB: "owner:bob",
        "bare-key-xyz:123": key_id("bare-key-xyz:123"),
    }
    ring = KeyRing(keys)
    assert ring.owner(ALICE2) == "owner:alice" and ring.owner("alice") is None and ring.owner(None) is None
    with pytest.raises(MiLlmError, match=r"--api-key-file: .* is open to other users \(mode 0644\): run chmod 600"):
        read_keys_file(_keys_file(tmp_path / "open", f"alice: {ALICE}\n", 0o644))
    for text, msg in (
        (f"alice: {ALICE}\nbob: {ALICE}\n", ":2: this key is already on line 1"),
        ("carol: short\n", ":1: the API key must be at least 8 characters"),
        (f"bad owner: {BOB}\n", ":1: expected 'OWNER: KEY'"),
    ):
        with pytest.raises(InputError, match=msg):
            read_keys_file(_keys_file(tmp_path / "k", text))
    with pytest.raises(MiLlmError, match="holds no keys"):
        read_keys_file(_keys_file(tmp_path / "empty", "# nothing\n"))
    with pytest.raises(MiLlmError, match="--api-key-file: .*: no such file"):
        read_keys_file(tmp_path / "missing")


# ---------------------------------------------------------------- 5. the real command: no key in argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mi_llm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )


@pytest.mark.timeout(120)
def test_serve_command_keys_stay_out_of_argv_and_the_access_log_is_redacted(tmp_path):
    keys = _keys_file(tmp_path / "keys", f"alice: {ALICE}\nbob: {BOB}\n")
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "MI_LLM_HOME": str(tmp_path / "home"), "MI_LLM_API_KEY": "env-key-00004", "COLUMNS": "300"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mi_llm",
                "serve",
                "--backend",
                "echo",
                "--port",
                str(port),
                "--api-key-file",
                str(keys),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "serve" in argv and str(keys) in argv
        assert not any(k in argv for k in (ALICE, BOB, "env-key-00004"))
        body = _body("hello", session_id="visible-sid-77")
        assert httpx.post(url + CHAT, json=body).status_code == 401
        for key in (ALICE, "env-key-00004"):  # the file's keys and the environment's
            assert (
                httpx.post(
                    url + CHAT, json={**body, "session_id": f"visible-sid-{key[:3]}"}, headers=_auth(key)
                ).status_code
                == 200
            )
        assert httpx.post(url + CHAT, json=body, headers=_auth(BOB)).status_code == 200
        assert httpx.get(url + "/v1/sessions/visible-sid-77", headers=_auth(ALICE)).status_code == 404
        assert httpx.get(url + "/v1/sessions/visible-sid-77", headers=_auth(BOB)).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    out = log_path.read_text()
    assert "auth on: 3 key(s), 3 owner(s)" in out, out
    assert f"/v1/sessions/~{short_hash('visible-sid-77')}" in out, out  # the access log is on, redacted
    assert "visible-sid" not in out and ALICE not in out


def test_serve_command_refuses_keys_on_the_command_line_and_open_key_files(tmp_path):
    r = _cli("serve", "--backend", "echo", "--api-key", "some-key-12345")
    assert r.returncode == 2 and r.stderr.strip().startswith("--api-key is no longer accepted"), r.stderr
    assert "some-key-12345" not in r.stderr
    keys = _keys_file(tmp_path / "keys", f"alice: {ALICE}\n", 0o644)
    r = _cli("serve", "--backend", "echo", "--api-key-file", str(keys))
    assert r.returncode == 2 and "is open to other users (mode 0644)" in r.stderr and "Traceback" not in r.stderr
    r = _cli("serve", "--backend", "echo", "--allowed-host", "bad host")
    assert r.returncode == 2 and r.stderr.strip().startswith("--allowed-host: 'bad host'"), r.stderr
