"""A local OpenAI-compatible chat server for tests (127.0.0.1, a thread, scripted failures)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """Answers `/v1/chat/completions`; `failures` is a list of HTTP statuses to return first.
    A request with `stream: true` is answered word by word as server-sent events, `chunk_delay`
    seconds apart (with the usage last when `stream_options.include_usage` asks for it; a
    plain answer comes after the time its stream would take);
    `words` makes the answer that many words long instead of an echo."""

    def __init__(
        self,
        failures: list[int] | None = None,
        retry_after: str | None = None,
        chunk_delay: float = 0.0,
        words: int | None = None,
    ):
        self.failures = list(failures or [])
        self.retry_after = retry_after
        self.chunk_delay = chunk_delay
        self.words = words
        self.streams_closed_early = 0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    status = fake.failures.pop(0) if fake.failures else 200
                if status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {status}", "type": "test"}}).encode()
                    self.send_response(status)
                    if fake.retry_after and status == 429:
                        self.send_header("Retry-After", fake.retry_after)
                elif body.get("stream"):
                    self._stream(body)
                    return
                else:
                    text = fake.answer(body)
                    time.sleep(fake.chunk_delay * len(text.split(" ")))  # as long as its stream would take
                    payload = json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            ],
                            "usage": {
                                "prompt_tokens": len(json.dumps(body["messages"])),
                                "completion_tokens": len(text.split()),
                                "total_tokens": 0,
                            },
                        }
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, body: dict[str, Any]) -> None:
                words = fake.answer(body).split(" ")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def send(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": choices,
                        **({"usage": usage} if usage else {}),
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                try:
                    for i, w in enumerate(words):
                        send([{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}])
                        time.sleep(fake.chunk_delay)
                    send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
                    if (body.get("stream_options") or {}).get("include_usage"):
                        send(
                            [],
                            {
                                "prompt_tokens": len(json.dumps(body["messages"])),
                                "completion_tokens": len(words),
                                "total_tokens": 0,
                            },
                        )
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the client closed the stream
                    with fake.lock:
                        fake.streams_closed_early += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict[str, Any]) -> str:
        if self.words is not None:
            return " ".join(f"w{i}" for i in range(self.words))
        return f"echo: {body['messages'][-1]['content']}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
