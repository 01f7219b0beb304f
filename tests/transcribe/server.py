"""A scripted OpenAI-compatible chat server on 127.0.0.1 (real HTTP, in a thread).

Each request is matched to its dialogue by the dialogue's first client text (found in
the rendered prompt); the dialogue's script says what each successive call gets:

    good | malformed | wrong_order | meta | english | nousage | cut
    429[:retry_after_s] | quota (429 insufficient_quota) | 500 | 401 | 400 | slow[:seconds]   (slow answers well, late)
    hang   (answers well once the test calls `server.release()`)

The last action of a script repeats. Every request is recorded (`server.calls`).

Tests that must act while a run is in progress hold the server instead of racing a clock:
`Script.hold_after = N` answers the first N requests and holds every later one until
`server.release()`; `Script.wait_for_peak = K` holds the first requests until K are in flight
at once (so a concurrency limit of K is reached for sure, whatever the machine's speed).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MARK = '{"turns": ['
REPLY = {
    "en": "It sounds like this really matters to you. What would you like to do next?",
    "zh": "听起来这件事对你真的很重要。你接下来想怎么做？",
}


def dialogue_in(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The original dialogue's turns, parsed from the first user message."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    obj, _ = json.JSONDecoder().raw_decode(user[user.index(_MARK) :])
    return obj["turns"]


def good_answer(turns: list[dict[str, str]], language: str) -> str:
    out = []
    for t in turns:
        if t["role"] == "client":
            out += [{"role": "client", "text": t["text"]}, {"role": "counselor", "text": REPLY[language]}]
    return json.dumps({"turns": out}, ensure_ascii=False)


def usage_of(messages: list[dict[str, str]], answer: str) -> dict[str, int]:
    """Deterministic token counts, so tests can recompute costs."""
    return {"prompt_tokens": len(json.dumps(messages)) // 4 + 1, "completion_tokens": len(answer) // 4 + 1}


@dataclass
class Call:
    key: str  # the dialogue's first client text
    action: str
    body_sha: str
    messages: list[dict[str, str]]
    body: dict[str, Any]
    started: float
    finished: float | None = None


@dataclass
class Script:
    scripts: dict[str, list[str]] = field(default_factory=dict)
    default: str = "good"
    delay_s: float = 0.0  # added to every answer
    hold_after: int | None = None  # requests after the first N wait for server.release()
    wait_for_peak: int = 0  # early requests wait until this many have been in flight at once


HANG_GUARD_S = 120.0  # a held request answers anyway after this long: a stuck test fails, never hangs


class ScriptedServer:
    def __init__(self, script: Script | None = None):
        self.script = script or Script()
        self.calls: list[Call] = []
        self._per_key: dict[str, int] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._flight = threading.Condition()
        self.in_flight = 0
        self.peak_in_flight = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    status, headers, payload = outer._answer(json.loads(body), hashlib.sha256(body).hexdigest())
                except Exception as e:  # a bug in the test server shows as a 599
                    status, headers, payload = 599, {}, {"error": {"message": repr(e)}}
                data = json.dumps(payload, ensure_ascii=False).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> ScriptedServer:
        self.thread.start()
        return self

    def release(self) -> None:
        """Answer the requests held by `hold_after` and the `hang` action (and all later ones)."""
        self._released.set()

    def stop(self) -> None:
        self.release()
        with self._flight:
            self._flight.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def calls_for(self, key: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.key == key]

    def _answer(self, req: dict[str, Any], sha: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        messages = req["messages"]
        turns = dialogue_in(messages)
        key = next(t["text"] for t in turns if t["role"] == "client")
        language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in key) else "en"
        with self._lock:
            n = self._per_key.get(key, 0)
            self._per_key[key] = n + 1
            steps = self.script.scripts.get(key, [self.script.default])
            action = steps[min(n, len(steps) - 1)]
            call = Call(key, action, sha, messages, req, time.monotonic())
            self.calls.append(call)
            held = self.script.hold_after is not None and len(self.calls) > self.script.hold_after
        with self._flight:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._flight.notify_all()
            self._flight.wait_for(
                lambda: self.peak_in_flight >= self.script.wait_for_peak or self._released.is_set(),
                timeout=HANG_GUARD_S,
            )
        try:
            if held:
                self._released.wait(HANG_GUARD_S)
            return self._respond(req, action, turns, language, call)
        finally:
            with self._flight:
                self.in_flight -= 1

    def _respond(
        self, req: dict[str, Any], action: str, turns: list[dict[str, str]], language: str, call: Call
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        messages = req["messages"]
        name, _, arg = action.partition(":")
        if self.script.delay_s:
            time.sleep(self.script.delay_s)
        if name == "429":
            return (
                429,
                {"Retry-After": arg or "1"},
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
            )
        if name == "quota":
            return (
                429,
                {},
                {
                    "error": {
                        "message": "You exceeded your current quota",
                        "type": "insufficient_quota",
                        "code": "insufficient_quota",
                    }
                },
            )
        if name in ("500", "401", "400"):
            return int(name), {}, {"error": {"message": f"scripted {name}", "type": "server_error"}}
        if name == "slow":
            time.sleep(float(arg or 1.0))
        if name == "hang":
            self._released.wait(HANG_GUARD_S)
        good = good_answer(turns, language)
        answer = {
            "good": good,
            "slow": good,
            "hang": good,
            "nousage": good,
            "cut": good[: len(good) // 2],
            "malformed": good[:-3],
            "wrong_order": json.dumps(
                {"turns": [{"role": "counselor", "text": REPLY[language]}, *json.loads(good)["turns"]]},
                ensure_ascii=False,
            ),
            "meta": "Here is the rewritten dialogue:\n" + good,
            "english": good_answer(turns, "en"),  # counselor turns in English, whatever the dialogue's language
        }[name]
        payload: dict[str, Any] = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": req["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "length" if name == "cut" else "stop",
                }
            ],
        }
        if name != "nousage":
            payload["usage"] = usage_of(messages, answer)
        call.finished = time.monotonic()
        return 200, {}, payload
