"""A local OpenAI-compatible chat server for tests (127.0.0.1, a thread, scripted failures)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """Answers `/v1/chat/completions`; `failures` is a list of HTTP statuses to return first."""

    def __init__(self, failures: list[int] | None = None, retry_after: str | None = None):
        self.failures = list(failures or [])
        self.retry_after = retry_after
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
                else:
                    last = body["messages"][-1]["content"]
                    text = f"echo: {last}"
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": len(json.dumps(body["messages"])), "completion_tokens": len(text.split()),
                                  "total_tokens": 0},
                    }).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
