"""The OpenAI-compatible server: /v1/chat/completions (plain and streaming), /v1/models,
sessions, and the web chat page at /.

Hardening, in the order a request meets it: the Host header must name this server (421,
against DNS rebinding) and a body must be declared JSON (415, so no cross-site "simple
request" gets through; `mi_llm.serve.hostguard`), request size limit (413), bearer-token
auth (401; each key stands for an owner, who sees only their own sessions), per-client
token-bucket rate limit (429), validation and `max_tokens` limit (400), the safety layer on
every user message not checked before (a crisis gets the fixed safe response, never the
model), a bounded generation queue (503). One engine serves all requests through one
worker thread.

Logs never contain conversation text unless `log_text` is set: requests are logged by id,
a hash of the session id, token counts, timings and the safety category; uvicorn's access
log shows session ids as the same hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.prompts import load_prompt
from mi_llm.serve.auth import KeyRing, bearer_token, key_id
from mi_llm.serve.config import ServeConfig
from mi_llm.serve.engine import ChatEngine, Finish, UpstreamError
from mi_llm.serve.hostguard import HostPolicy, LocalServerGuard, add_security_headers
from mi_llm.serve.protocol import (
    ApiError,
    ChatRequest,
    chunk,
    completion_body,
    conversation,
    new_id,
    normalize_messages,
    parse_request,
    usage,
)
from mi_llm.serve.ratelimit import TokenBucketLimiter
from mi_llm.serve.safety.layer import CheckedMessages, SafetyDecision, SafetyLayer
from mi_llm.serve.sessions import SessionNotFound, SessionStore, check_session_id
from mi_llm.serve.worker import GenerationWorker, QueueFull

log = logging.getLogger("mi_llm.serve")


def _web_dir() -> Path:
    return Path(str(resources.files("mi_llm.serve").joinpath("web")))


def short_hash(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10] if text else None


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, declared or sent chunked.

    The body is read here first (bodies are small) and replayed to the app, so an oversized
    one is refused before any other code sees it.
    """

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any
    ) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._reject(send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        err = ApiError(413, f"request body too large (limit {self.limit} bytes)", code="request_too_large")
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class Client:
    owner: str  # whose sessions it may use: a hash of its key, or "local"
    rate_key: str


# A first user message per language for the warm-up (what follows the system prompt differs
# per request; only the shared part matters).
WARM_USER = {"en": "Hello.", "zh": "你好。"}


class ChatService:
    """The request logic, independent of HTTP details."""

    def __init__(self, engine: ChatEngine, settings: ServeConfig, store: SessionStore, safety: SafetyLayer):
        self.engine = engine
        self.settings = settings
        self.store = store
        self.safety = safety
        self.worker = GenerationWorker(engine, settings.max_queue)
        # Every conversation opens with the MI system prompt of its language: in the engine's
        # prefix cache before the first client comes.
        languages = [settings.language] if settings.language in WARM_USER else list(WARM_USER)
        engine.warm([conversation(load_prompt("system", lang), [], WARM_USER[lang]) for lang in languages])
        self.limiter = TokenBucketLimiter(settings.rate_per_minute, settings.rate_burst)
        self.started = int(time.time())
        owners = dict(settings.api_keys or {})
        if settings.api_key:
            owners.setdefault(settings.api_key, key_id(settings.api_key))
        self.keys = KeyRing(owners)
        self.checked = CheckedMessages(settings.max_checked_messages)

    # ---------------------------------------------------------------- guards

    def guard(self, request: Request) -> Client:
        host = request.client.host if request.client else "unknown"
        if self.keys:
            owner = self.keys.owner(bearer_token(request.headers.get("authorization")))
            if owner is None:
                raise ApiError(
                    401,
                    "missing or invalid API key (send Authorization: Bearer KEY)",
                    "authentication_error",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
            client = Client(owner=owner, rate_key=owner + "@" + host)
        else:
            client = Client(owner="local", rate_key="ip:" + host)
        wait = self.limiter.acquire(client.rate_key)
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit exceeded; retry in {wait:.1f} s",
                "rate_limit_error",
                "rate_limit_exceeded",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        return client

    # ---------------------------------------------------------------- chat

    def generation_config(self, req: ChatRequest) -> GenerationConfig:
        s = self.settings
        max_tokens = req.max_completion_tokens or req.max_tokens or min(s.default_max_tokens, s.max_tokens_limit)
        if max_tokens < 1:
            raise ApiError(400, "max_tokens must be at least 1")
        if max_tokens > s.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens {max_tokens} is over this server's limit of {s.max_tokens_limit}",
                code="max_tokens_too_large",
            )
        temperature = s.temperature if req.temperature is None else req.temperature
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences")
        return GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=req.top_p or s.top_p,
            top_k=s.top_k,
            repetition_penalty=s.repetition_penalty,
            seed=req.seed,
            stop=stops,
        )

    async def chat(self, request: Request) -> Response:
        client = self.guard(request)
        req = parse_request(await request.body())
        if (req.n or 1) != 1:
            raise ApiError(400, "only n=1 is supported")
        config = self.generation_config(req)
        msgs = normalize_messages(req.messages, self.settings.max_messages)
        user = msgs[-1]["content"]
        sid = req.session_id or request.headers.get("x-session-id")
        if sid is not None:
            try:
                check_session_id(sid)
            except MiLlmError as e:
                raise ApiError(400, str(e)) from None
        language = req.language or self.settings.language
        history: list[dict[str, str]] = [m for m in msgs[:-1] if m["role"] != "system"]
        seed: list[dict[str, str]] = []  # turns the client sent that a new session stores first
        seen = history  # the earlier turns the model will see: their user messages are checked too
        if sid is not None:
            try:
                session = self.store.open(sid, client.owner, language or detect_language(user))
            except SessionNotFound:
                raise ApiError(404, f"no session {sid!r}", code="session_not_found") from None
            stored = self.store.history(sid)
            if stored:
                seen = stored  # with the marks of turns the safety layer answered
                # the server's copy wins (with each reply's strategy code, for a policy)
                history = [{k: v for k, v in m.items() if k in ("role", "content", "code")} for m in stored]
            else:
                seed = history
            language = language or session.language
        language = language or detect_language(user)
        system = next((m["content"] for m in msgs if m["role"] == "system"), None) or load_prompt("system", language)
        convo = conversation(system, history, user)
        # Earlier user messages too: a crisis in a client-sent history (or a new session's seed)
        # must not reach the model. Turns already answered by the safety layer are not re-judged.
        earlier = [m for m in seen if m["role"] == "user" and not m.get("safety")]
        decision, which = self.safety.check_messages(
            [*(m["content"] for m in earlier), user], language, self.checked, f"{client.owner}\0{sid or ''}"
        )
        if decision.crisis and which < len(earlier) and any(m is earlier[which] for m in seed):
            earlier[which]["safety"] = decision.result.category  # stored marked: it was answered
        rid = new_id()
        ext: dict[str, Any] = {"session_id": sid, "safety": decision.public(), "language": language}
        headers = {"X-Session-Id": sid} if sid else {}
        if self.settings.log_text:
            log.info("request %s user text: %r", rid, user)
        where = (
            "the new message"
            if which == len(earlier)
            else f"earlier user message {which + 1} of {len(earlier)} unanswered"
        )
        if decision.level == "high":
            return self._safe_response(rid, req, decision, sid, seed, user, language, ext, headers, where)
        check_in = decision.check_in if decision.crisis else None
        if check_in:  # low risk: the model answers, the check-in follows, the turn is flagged
            cat = decision.result.category
            if sid is not None:
                self.store.flag(sid, cat, decision.result.matched, decision.level)
            log.warning(
                "safety: check-in appended (request %s, category %s, detector %s, level %s, in %s, session %s)",
                rid,
                cat,
                decision.result.matched,
                decision.level,
                where,
                short_hash(sid),
            )
        try:
            job = self.worker.submit(convo, config, client.rate_key)  # round-robin over clients
        except QueueFull:
            raise ApiError(
                503, "the server is busy; retry shortly", "server_error", "queue_full", {"Retry-After": "5"}
            ) from None
        record = _Record(rid, sid, language, time.monotonic(), check_in, decision.result.category)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            gen = self._sse(job, record, ext, seed, user, include_usage)
            return StreamingResponse(
                gen,
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        parts: list[str] = []
        finish = Finish("stop", 0, 0)
        try:
            async for item in self.worker.results(job):
                if isinstance(item, Finish):
                    finish = item
                else:
                    record.first_token(parts)
                    parts.append(item)
        except UpstreamError as e:  # nothing is stored: the session stays as it was
            self._log(record, Finish("error", 0, 0), decision)
            raise _upstream_api_error(e) from None
        except MiLlmError as e:
            raise ApiError(400, str(e)) from None
        text = "".join(parts) + (f"\n\n{check_in}" if check_in else "")
        self._store(record, seed, user, text, finish)
        self._log(record, finish, decision)
        if finish.code:
            ext["code"] = finish.code
        body = completion_body(
            rid,
            self.engine.model_id,
            text,
            _finish_reason(finish),
            usage(finish.prompt_tokens, finish.completion_tokens),
            ext,
        )
        return JSONResponse(body, headers=headers)

    async def _sse(
        self, job: Any, record: _Record, ext: dict[str, Any], seed: list[dict[str, str]], user: str, include_usage: bool
    ) -> AsyncIterator[str]:
        model, created = self.engine.model_id, int(time.time())
        parts: list[str] = []
        finish = Finish("cancelled", 0, 0)
        try:
            yield chunk(record.rid, model, created, {"role": "assistant", "content": ""}, ext=ext)
            async for item in self.worker.results(job):
                if isinstance(item, Finish):
                    finish = item
                    continue
                record.first_token(parts)
                parts.append(item)
                yield chunk(record.rid, model, created, {"content": item})
            if record.check_in and finish.reason != "cancelled":
                parts.append(f"\n\n{record.check_in}")
                yield chunk(record.rid, model, created, {"content": parts[-1]})
            yield chunk(
                record.rid,
                model,
                created,
                {},
                _finish_reason(finish),
                ext={"code": finish.code} if finish.code else None,
            )
            if include_usage:
                yield chunk(
                    record.rid, model, created, None, usage=usage(finish.prompt_tokens, finish.completion_tokens)
                )
            self._store(record, seed, user, "".join(parts), finish)
            yield "data: [DONE]\n\n"
        except UpstreamError as e:  # nothing is stored: the session stays as it was
            finish = Finish("error", finish.prompt_tokens, len(parts))
            yield "data: " + json.dumps(_upstream_api_error(e).body()) + "\n\n"
            yield "data: [DONE]\n\n"
        except MiLlmError as e:
            yield "data: " + json.dumps(ApiError(400, str(e)).body()) + "\n\n"
            yield "data: [DONE]\n\n"
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
            log.error("request %s failed: %s", record.rid, type(e).__name__)
            yield "data: " + json.dumps(ApiError(500, "generation failed", "server_error").body()) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self._log(record, finish, None)

    def _safe_response(
        self,
        rid: str,
        req: ChatRequest,
        decision: SafetyDecision,
        sid: str | None,
        seed: list[dict[str, str]],
        user: str,
        language: str,
        ext: dict[str, Any],
        headers: dict[str, str],
        where: str,
    ) -> Response:
        text = decision.response or ""
        cat = decision.result.category
        if sid is not None:
            self.store.flag(sid, cat, decision.result.matched)
            self.store.append(
                sid,
                [
                    *seed,
                    {"role": "user", "content": user, "safety": cat},
                    {"role": "assistant", "content": text, "safety": cat},
                ],
                language,
            )
        log.warning(
            "safety: crisis response sent (request %s, category %s, rule %s, in %s, session %s)",
            rid,
            cat,
            decision.result.matched,
            where,
            short_hash(sid),
        )
        if not req.stream:
            return JSONResponse(
                completion_body(rid, self.engine.model_id, text, "stop", usage(0, 0), ext), headers=headers
            )

        async def events() -> AsyncIterator[str]:
            created = int(time.time())
            yield chunk(rid, self.engine.model_id, created, {"role": "assistant", "content": ""}, ext=ext)
            yield chunk(rid, self.engine.model_id, created, {"content": text})
            yield chunk(rid, self.engine.model_id, created, {}, "stop")
            if (req.stream_options or {}).get("include_usage"):
                yield chunk(rid, self.engine.model_id, created, None, usage=usage(0, 0))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )

    def _store(self, record: _Record, seed: list[dict[str, str]], user: str, reply: str, finish: Finish) -> None:
        sid = record.sid
        if self.settings.log_text:
            log.info("reply text (session %s): %r", short_hash(sid), reply)
        if sid is None or finish.reason == "cancelled":
            return
        turn: list[dict[str, str]] = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply, **({"code": finish.code} if finish.code else {})},
        ]
        if record.check_in and record.category:  # marked: the layer checked in on this turn, not judged again
            for m in turn:
                m["safety"] = record.category
        self.store.append(sid, [*seed, *turn], record.language)

    def _log(self, record: _Record, finish: Finish, decision: SafetyDecision | None) -> None:
        total = time.monotonic() - record.t0
        ttft = f"{record.ttft:.3f}s" if record.ttft is not None else "-"
        log.info(
            "request %s: %s, %d prompt + %d completion tokens, first token %s, total %.3fs, session %s, language %s",
            record.rid,
            finish.reason,
            finish.prompt_tokens,
            finish.completion_tokens,
            ttft,
            total,
            short_hash(record.sid),
            record.language,
        )


@dataclass
class _Record:
    rid: str
    sid: str | None
    language: str
    t0: float
    check_in: str | None = None  # appended to the reply (low risk)
    category: str | None = None  # of the low risk
    ttft: float | None = None

    def first_token(self, parts: list[str]) -> None:
        if not parts and self.ttft is None:
            self.ttft = time.monotonic() - self.t0


def _upstream_api_error(e: UpstreamError) -> ApiError:
    headers = {"Retry-After": str(max(1, int((e.retry_after or 5) + 0.999)))} if e.status == 503 else None
    return ApiError(e.status, str(e), "server_error", "upstream_error", headers)


def _finish_reason(finish: Finish) -> str:
    return finish.reason if finish.reason in ("stop", "length") else "stop"


def create_app(
    engine: ChatEngine,
    settings: ServeConfig | None = None,
    store: SessionStore | None = None,
    safety: SafetyLayer | None = None,
) -> FastAPI:
    settings = settings or ServeConfig()
    hosts = HostPolicy(settings.host, settings.allowed_hosts)  # bad --allowed-host fails before any set-up
    store = store or SessionStore(":memory:")
    safety = safety or SafetyLayer()
    service = ChatService(engine, settings, store, safety)
    app = FastAPI(title="mi-llm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(MiLlmError)
    async def user_error(_: Request, exc: MiLlmError) -> JSONResponse:
        err = ApiError(400, str(exc))
        return JSONResponse(err.body(), status_code=400)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        add_security_headers(response.headers, page=not request.url.path.startswith("/v1/"))
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.chat(request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        service.guard(request)
        return {
            "object": "list",
            "data": [{"id": engine.model_id, "object": "model", "created": service.started, "owned_by": "mi-llm"}],
        }

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, request: Request) -> dict[str, Any]:
        client = service.guard(request)
        try:
            s = store.get(check_session_id(session_id), client.owner)
        except (SessionNotFound, MiLlmError):
            raise ApiError(404, "no such session", code="session_not_found") from None
        return {"session": s.to_dict(), "messages": store.history(session_id)}

    @app.delete("/v1/sessions/{session_id}")
    async def reset_session(session_id: str, request: Request) -> dict[str, Any]:
        client = service.guard(request)
        try:
            store.get(check_session_id(session_id), client.owner)
        except (SessionNotFound, MiLlmError):
            raise ApiError(404, "no such session", code="session_not_found") from None
        store.reset(session_id)
        return {"id": session_id, "reset": True}

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queue": service.worker.pending, "auth": bool(service.keys)}

    web = _web_dir()

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    app.router.on_shutdown.append(service.worker.close)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)  # before auth and parsing
    # Outermost: a foreign Host or a non-JSON body is refused before the body is even read.
    app.add_middleware(
        LocalServerGuard,
        policy=hosts,
        error_body=lambda status, message, code: ApiError(status, message, code=code).body(),
    )
    return app


# ---------------------------------------------------------------- running


_SESSION_PATH = re.compile(r"(/v1/sessions/)([^/?#\s]+)")


def redact_path(path: str) -> str:
    """A request path fit for a log: session ids as their hash (as in the server's own log
    lines), no query string."""
    path = _SESSION_PATH.sub(lambda m: m.group(1) + "~" + (short_hash(m.group(2)) or ""), path)
    head, sep, _ = path.partition("?")
    return head + ("?…" if sep else "")


class RedactAccessLog(logging.Filter):
    """uvicorn's access log records carry the path as an argument: redact it in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_path(a) if isinstance(a, str) and a.startswith("/") else a for a in record.args)
        return True


_REDACT = RedactAccessLog()


def uvicorn_config(app: Any, host: str, port: int, *, access_log: bool, log_level: str, **kwargs: Any) -> Any:
    """uvicorn's config with its access log, if on, redacted (the config sets up uvicorn's loggers,
    so the filter goes on after it)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level, **kwargs)
    logging.getLogger("uvicorn.access").addFilter(_REDACT)  # once: addFilter skips a filter already there
    return config


class BackgroundServer:
    """uvicorn in a thread (tests, embedding): `with BackgroundServer(app) as s: s.url`."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", access_log: bool = False
    ):
        import uvicorn

        self.config = uvicorn_config(app, host, port, access_log=access_log, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="mi-llm-uvicorn", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(app: Any, host: str, port: int, access_log: bool = True) -> None:
    """Serve until interrupted. uvicorn's access log has the client address, method, redacted
    path and status (no bodies, no session ids)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn_config(app, host, port, access_log=access_log, log_level="info", timeout_graceful_shutdown=5)
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:  # uvicorn has logged why (most often: the port is taken)
        raise MiLlmError(f"the server could not start on {host}:{port}; pick another --port or --host")
