"""What keeps a server on this machine safe from the web pages its user visits.

Two holes a local server without a key has, and what closes them:

- **DNS rebinding**: a page on `evil.example` re-points its own name at 127.0.0.1 and then
  reads and writes the server as if it were same-origin. The browser still sends
  `Host: evil.example:PORT`, so only Host names the server was bound for are accepted
  (421 otherwise).
- **Cross-site "simple requests"**: any page may POST `text/plain` (or a body without a
  type) to 127.0.0.1 without asking first. Requiring `Content-Type: application/json` on
  every request that carries a body forces a CORS preflight, which these servers never
  grant (415 otherwise).

Used by `mi-llm serve` (`mi_llm.serve.api`) and `mi-llm miti annotate`
(`mi_llm.miti.annotate.app`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from mi_llm.errors import MiLlmError
from mi_llm.serve.auth import is_loopback

# Pages may load only this server's own files; nothing may frame them.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD = {"", "0.0.0.0", "::"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_NAME = re.compile(r"^[a-z0-9_.:\-]+$")  # host names and IP literals, lower case, brackets removed


def parse_host(value: str | None) -> tuple[str, int | None] | None:
    """'name:port', '[::1]:port' or 'name' -> (lower-case name, port or None); None when malformed."""
    if not value:
        return None
    try:
        parts = urlsplit("//" + value.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    name = name.rstrip(".")  # "localhost." is "localhost"
    return (name, port) if _NAME.match(name) else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """The Host headers a server accepts.

    - the name or address it was bound to and, for a loopback or wildcard bind (which
      includes loopback), localhost, 127.0.0.1 and [::1], each with the server's port;
    - the IP address the connection arrived on, with the port (a page cannot make a
      browser send an IP literal that is not its URL's, so this is rebinding-safe; it is
      what lets a server bound to 0.0.0.0 be reached by address);
    - each `allowed` entry: `NAME` (any port: a reverse proxy may drop it) or `NAME:PORT`.
    """

    def __init__(self, bound_host: str, allowed: Iterable[str] = ()):
        bound = bound_host.strip().strip("[]").lower()
        self.names: set[str] = set()
        if bound not in _WILDCARD:
            self.names.add(bound)
        if bound in _WILDCARD or is_loopback(bound):
            self.names.update(LOOPBACK_NAMES)
        self.extra: set[tuple[str, int | None]] = set()
        for entry in allowed:
            parsed = parse_host(entry)
            if parsed is None or "*" in entry:
                raise MiLlmError(f"--allowed-host: {entry!r} is not a host name (NAME or NAME:PORT)")
            self.extra.add(parsed)

    def allows(self, host_header: str | None, server: Any) -> bool:
        """Whether `Host: host_header` fits a request that arrived on `server` (ASGI (address, port))."""
        parsed = parse_host(host_header)
        if parsed is None:
            return False
        name, port = parsed
        if (name, None) in self.extra or (name, port) in self.extra:
            return True
        local_addr, local_port = (server[0], server[1]) if server else (None, None)
        if (port or 80) != local_port:
            return False
        if name in self.names:
            return True
        return (
            _is_ip(name)
            and isinstance(local_addr, str)
            and _is_ip(local_addr)
            and ipaddress.ip_address(name) == ipaddress.ip_address(local_addr)
        )


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def carries_body(method: str, headers: Headers) -> bool:
    """POST, PUT and PATCH always count (an empty one still changes state); others when a body is sent."""
    if method in _BODY_METHODS:
        return True
    length = headers.get("content-length")
    return bool(headers.get("transfer-encoding")) or (length is not None and length.strip() not in ("", "0"))


ErrorBody = Callable[[int, str, str], dict[str, Any]]  # (status, message, code) -> the JSON body


def detail_body(status: int, message: str, code: str) -> dict[str, Any]:
    """FastAPI's own error shape, {"detail": ...}."""
    return {"detail": message}


class LocalServerGuard:
    """ASGI middleware, outermost: 421 for a Host this server was not bound for, 415 for a
    request body that is not declared JSON. Neither reads the body."""

    def __init__(self, app: Any, policy: HostPolicy, error_body: ErrorBody = detail_body):
        self.app = app
        self.policy = policy
        self.error_body = error_body

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any
    ) -> None:
        if scope["type"] != "http":  # neither app serves websockets
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.policy.allows(headers.get("host"), scope.get("server")):
            await self._reject(
                send,
                421,
                "this server does not answer to that Host header (pass --allowed-host NAME to add a name)",
                "host_not_allowed",
            )
            return
        if carries_body(scope["method"], headers) and not is_json(headers.get("content-type")):
            await self._reject(
                send, 415, "request bodies must be sent as Content-Type: application/json", "unsupported_media_type"
            )
            return
        await self.app(scope, receive, send)

    async def _reject(self, send: Any, status: int, message: str, code: str) -> None:
        body = json.dumps(self.error_body(status, message, code)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def add_security_headers(headers: Any, page: bool) -> None:
    """nosniff and no-referrer on every response; a strict CSP and no framing on pages."""
    for k, v in {**SECURITY_HEADERS, **(PAGE_HEADERS if page else {})}.items():
        headers.setdefault(k, v)
