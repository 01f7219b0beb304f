"""A local HTTP file server on 127.0.0.1 with Range support, for downloader tests.

It serves the files under a root folder and can misbehave on purpose: ignore Range
headers, or drop the connection after N bytes of a given file (once).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class ServerState:
    root: Path
    ignore_range: bool = False
    cut_once: dict[str, int] = field(default_factory=dict)  # url path -> bytes sent before dropping
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RangeHandler(SimpleHTTPRequestHandler):
    state: ServerState  # set on the subclass made per server
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _file(self) -> tuple[str, Path | None]:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.state.root / rel).resolve()
        if self.state.root.resolve() not in path.parents or not path.is_file():
            return rel, None
        return rel, path

    def do_HEAD(self) -> None:
        self.send_error(405)

    def do_GET(self) -> None:
        rel, path = self._file()
        rng = self.headers.get("Range")
        if path is None:
            self._log(rel, rng, 404)
            self.send_error(404)
            return
        data = path.read_bytes()
        size = len(data)
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(rng or "")
        if m and not self.state.ignore_range:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                self._log(rel, rng, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start : end + 1]
        self._log(rel, rng, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with self.state.lock:
            cut = self.state.cut_once.pop(rel, None)
        if cut is not None:
            # Send part of the body, then drop the connection (the client sees a short read).
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _log(self, rel: str, rng: str | None, status: int) -> None:
        with self.state.lock:
            self.state.requests.append((rel, rng, status))


@contextlib.contextmanager
def serve(root: Path, **options: object) -> Iterator[tuple[str, ServerState]]:
    """Serve `root` on a free port of 127.0.0.1; yields (base URL, state)."""
    state = ServerState(root=Path(root), **options)  # type: ignore[arg-type]
    handler = type("Handler", (RangeHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
