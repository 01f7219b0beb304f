"""The coding tool's server: sessions in, one coder's coded Dialogue JSONL out.

Every change the page makes is sent here and committed to the SQLite autosave file at
once; export turns the saved states into a coded Dialogue JSONL (the input of
`mi-llm miti agree` and `mi-llm miti score`). The sessions are health data and the page
has no login, so the server listens on loopback only, answers only to the Host names it was
bound for (DNS rebinding), takes writes only as JSON (no cross-site form or "simple
request" can save or export) and sends a strict Content-Security-Policy, no framing, no
sniffing and no referrer (`mi_llm.serve.hostguard`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mi_llm.corpus.schema import Dialogue, GlobalRatings, Utterance
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import write_jsonl
from mi_llm.miti.annotate.store import AutosaveStore
from mi_llm.miti.codebook import CODE_NAMES, CODES, GLOBAL_NAMES, GLOBALS, SHORTCUTS
from mi_llm.miti.session import check_code, check_rating, presplit_turn, read_coded_dialogues, with_coding

log = logging.getLogger(__name__)
_SPACE = re.compile(r"\s+")
STATIC_DIR = Path(str(resources.files("mi_llm.miti.annotate").joinpath("static")))


class UtterancePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    code: str | None = None


class SessionPayload(BaseModel):
    """The page's whole state of one session: every counselor turn's utterances, globals, done."""

    model_config = ConfigDict(extra="forbid")
    turns: dict[str, list[UtterancePayload]]
    globals: dict[str, int | None] = {}
    done: bool = False


def default_paths(sessions: Path, coder: str, out: Path | None) -> tuple[Path, Path]:
    """(export file, autosave file): `<stem>.<coder>.coded.jsonl` beside the sessions by default."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", coder).strip("._") or "coder"
    out = out or sessions.with_name(f"{sessions.stem}.{safe}.coded.jsonl")
    return out, out.with_name(out.name + ".autosave.sqlite3")


class AnnotationProject:
    """The sessions being coded, one coder, the autosave store and the export file."""

    def __init__(
        self, sessions_path: str | Path, coder: str, out: str | Path | None = None, *, keep_codes: bool = False
    ):
        if not coder.strip():
            raise MiLlmError("--coder-name must not be blank")
        self.sessions_path = Path(sessions_path)
        self.coder = coder.strip()
        self.keep_codes = keep_codes
        rows = read_coded_dialogues(self.sessions_path)
        for lineno, d in rows:
            if not any(t.role == "counselor" for t in d.turns):
                raise InputError(
                    self.sessions_path, f"session {d.id!r} is empty: it has no counselor turns to code", lineno
                )
        self.dialogues: list[Dialogue] = [d for _, d in rows]
        self.out, self.autosave = default_paths(self.sessions_path, self.coder, Path(out) if out else None)
        self.store = AutosaveStore(self.autosave, self.coder)

    # --- views -----------------------------------------------------------------------------

    def _dialogue(self, index: int) -> Dialogue:
        if not 0 <= index < len(self.dialogues):
            raise KeyError(index)
        return self.dialogues[index]

    def _initial(self, d: Dialogue) -> dict[str, Any]:
        turns = {}
        for i, t in enumerate(d.turns):
            if t.role == "counselor":
                utts = presplit_turn(t, d.language)
                turns[str(i)] = [{"text": u.text, "code": u.code if self.keep_codes else None} for u in utts]
        g = d.miti_globals.model_dump() if (self.keep_codes and d.miti_globals) else dict.fromkeys(GLOBALS)
        return {"turns": turns, "globals": g, "done": False}

    def state(self, index: int) -> tuple[dict[str, Any], str | None, str | None]:
        """(state, saved-at or None, warning or None) of a session."""
        d = self._dialogue(index)
        saved = self.store.get(d.id)
        if saved is None:
            return self._initial(d), None, None
        state, at = saved
        try:
            self.validate(index, SessionPayload.model_validate(state))
        except (ValueError, MiLlmError) as e:
            # The sessions file changed under the saved coding: start the session afresh.
            log.warning("saved coding of session %s no longer fits the sessions file: %s", d.id, e)
            return self._initial(d), None, f"the saved coding no longer fits this session ({e}); it was reset"
        return state, at, None

    def progress(self, index: int) -> dict[str, Any]:
        d = self._dialogue(index)
        state, at, _ = self.state(index)
        utts = [u for us in state["turns"].values() for u in us]
        return {
            "index": index,
            "id": d.id,
            "topic": d.topic,
            "language": d.language,
            "utterances": len(utts),
            "coded": sum(u["code"] is not None for u in utts),
            "rated": sum(v is not None for v in state["globals"].values()),
            "done": bool(state.get("done")),
            "saved_at": at,
        }

    def view(self, index: int) -> dict[str, Any]:
        d = self._dialogue(index)
        state, at, warning = self.state(index)
        turns = []
        for i, t in enumerate(d.turns):
            turn: dict[str, Any] = {"index": i, "role": t.role, "text": t.text}
            if t.role == "counselor":
                turn["utterances"] = state["turns"][str(i)]
            turns.append(turn)
        return {
            "index": index,
            "id": d.id,
            "language": d.language,
            "topic": d.topic,
            "target_behaviour": d.meta.get("target_behaviour"),
            "turns": turns,
            "globals": state["globals"],
            "done": bool(state.get("done")),
            "saved_at": at,
            "warning": warning,
        }

    def meta(self) -> dict[str, Any]:
        return {
            "coder": self.coder,
            "sessions_file": self.sessions_path.name,
            "out": str(self.out),
            "codes": [{"key": c, "name": CODE_NAMES[c], "shortcut": SHORTCUTS[c]} for c in CODES],
            "globals": [{"key": g, "name": GLOBAL_NAMES[g]} for g in GLOBALS],
            "sessions": [self.progress(i) for i in range(len(self.dialogues))],
        }

    # --- saving ----------------------------------------------------------------------------

    def validate(self, index: int, payload: SessionPayload) -> dict[str, Any]:
        """The payload as a state dict; ValueError with a readable message when it does not fit."""
        d = self._dialogue(index)
        counselor = {str(i) for i, t in enumerate(d.turns) if t.role == "counselor"}
        if set(payload.turns) != counselor:
            missing, extra = sorted(counselor - set(payload.turns), key=int), sorted(set(payload.turns) - counselor)
            raise ValueError(f"turns must be exactly the counselor turns (missing {missing}, not counselor {extra})")
        for key, utts in payload.turns.items():
            turn = d.turns[int(key)]
            if not utts or any(not u.text.strip() for u in utts):
                raise ValueError(f"turn {int(key) + 1}: blank or missing utterance")
            for j, u in enumerate(utts):
                if msg := check_code(u.code):
                    raise ValueError(f"turn {int(key) + 1}, utterance {j + 1}: {msg}")
            if _SPACE.sub("", "".join(u.text for u in utts)) != _SPACE.sub("", turn.text):
                raise ValueError(f"turn {int(key) + 1}: the utterances do not add up to the turn's text")
        for name, value in payload.globals.items():
            if name not in GLOBALS or value is not None:
                if msg := check_rating(name, value):
                    raise ValueError(msg)
        return {
            "turns": {k: [u.model_dump() for u in v] for k, v in payload.turns.items()},
            "globals": {g: payload.globals.get(g) for g in GLOBALS},
            "done": payload.done,
        }

    def save(self, index: int, payload: SessionPayload) -> dict[str, Any]:
        state = self.validate(index, payload)
        self.store.put(self._dialogue(index).id, state)
        return self.progress(index)

    # --- export ----------------------------------------------------------------------------

    def coded_dialogue(self, index: int) -> Dialogue | None:
        """The coder's version of a session, or None if they never saved it."""
        d = self._dialogue(index)
        if d.id not in self.store.saved_ids():
            return None
        state, _, warning = self.state(index)
        if warning:
            return None
        g = state["globals"]
        ratings = GlobalRatings(**g) if all(g[k] is not None for k in GLOBALS) else None
        codes = {int(k): [Utterance(text=u["text"], code=u["code"]) for u in us] for k, us in state["turns"].items()}
        coded = with_coding(d, codes, ratings)
        meta = {**coded.meta, "miti_coder": self.coder, "miti_done": bool(state.get("done"))}
        return coded.model_copy(update={"meta": meta})

    def export(self, path: str | Path | None = None) -> dict[str, Any]:
        """Write every saved session (input order) as a coded Dialogue JSONL; returns counts."""
        out = Path(path) if path else self.out
        coded = [c for c in (self.coded_dialogue(i) for i in range(len(self.dialogues))) if c is not None]
        write_jsonl(out, coded)
        summary = {
            "path": str(out),
            "sessions": len(coded),
            "done": sum(bool(c.meta.get("miti_done")) for c in coded),
            "without_globals": sum(c.miti_globals is None for c in coded),
            "not_saved": len(self.dialogues) - len(coded),
        }
        log.info("exported %d coded session(s) to %s", len(coded), out)
        return summary


def check_host(host: str) -> str:
    """Loopback only: the page has no login and shows health data."""
    from mi_llm.serve.auth import is_loopback

    if not is_loopback(host):
        raise MiLlmError(
            f"--host {host}: the coding page has no login and shows health data, so it listens on "
            "this machine only (127.0.0.1, ::1 or localhost); reach it from elsewhere through an SSH tunnel"
        )
    return host


def create_app(project: AnnotationProject, host: str = "127.0.0.1", allowed_hosts: Iterable[str] = ()) -> Any:
    """The FastAPI app: the page, its assets, and a small JSON API, for a server bound to `host`."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    from mi_llm.serve.hostguard import HostPolicy, LocalServerGuard, add_security_headers

    policy = HostPolicy(host, allowed_hosts)
    app = FastAPI(title="mi-llm MITI coding", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        add_security_headers(response.headers, page=True)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")  # health data: no copies in caches
        return response

    def _index(i: int) -> int:
        if not 0 <= i < len(project.dialogues):
            raise HTTPException(404, f"no session {i} (there are {len(project.dialogues)})")
        return i

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "coder": project.coder, "sessions": len(project.dialogues)}

    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        return project.meta()

    @app.get("/api/sessions/{i}")
    def get_session(i: int) -> dict[str, Any]:
        return project.view(_index(i))

    @app.api_route("/api/sessions/{i}", methods=["PUT", "POST"])
    def put_session(i: int, payload: SessionPayload) -> dict[str, Any]:
        try:
            return project.save(_index(i), payload)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @app.post("/api/export")
    def export() -> dict[str, Any]:
        try:
            return project.export()
        except MiLlmError as e:
            raise HTTPException(500, str(e)) from None

    app.add_middleware(LocalServerGuard, policy=policy)  # outermost: before routing and body parsing
    return app


def serve(
    project: AnnotationProject, host: str = "127.0.0.1", port: int = 8765, allowed_hosts: Iterable[str] = ()
) -> None:
    import socket

    import uvicorn

    check_host(host)
    app = create_app(project, host, allowed_hosts)

    # A clear message instead of uvicorn's log line and exit code 1.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as e:
            raise MiLlmError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
