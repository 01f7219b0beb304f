"""Conversations kept in SQLite, so a session resumes after a restart.

Tables:
- `sessions(id, owner, created, updated, language, flagged, flag_category, flagged_at, flag_count)`
- `messages(session_id, seq, role, content, created, safety, code)`: the user and assistant
  turns, `safety` = the crisis category when the safety layer answered that turn (high risk)
  or appended its check-in to the model's answer (low risk), `code` = a
  reply's strategy code (`--strategy`; mi_llm.build.strategy) with its tag cut from `content`.
- `safety_events(id, session_id, created, category, rule, level)`: every crisis detection;
  `rule` names the rule or the learned detector (`learned.<type>`, `context.<type>`),
  `level` is high or low (NULL in databases from before levels: those were all high).

`owner` is a hash of the API key that created the session ("local" without a key): one
key cannot read another key's sessions. The database holds conversation text (health
data): it is created readable by its owner only (mode 0600).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    language TEXT,
    flagged INTEGER NOT NULL DEFAULT 0,
    flag_category TEXT,
    flagged_at REAL,
    flag_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    safety TEXT,
    code TEXT,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS safety_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    category TEXT NOT NULL,
    rule TEXT,
    level TEXT
);
"""


class SessionNotFound(MiLlmError):
    pass


@dataclass
class Session:
    id: str
    owner: str
    created: float
    updated: float
    language: str | None
    flagged: bool
    flag_category: str | None
    flagged_at: float | None
    flag_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": int(self.created),
            "updated": int(self.updated),
            "language": self.language,
            "flagged": self.flagged,
            "flag_category": self.flag_category,
            "flagged_at": int(self.flagged_at) if self.flagged_at else None,
            "flag_count": self.flag_count,
        }


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise MiLlmError("session_id must be 1 to 128 characters of letters, digits and _ . : -")
    return session_id


class SessionStore:
    """Thread-safe: one connection behind a lock (writes are small and quick)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "code" not in columns:  # a database from before strategy codes
                self._db.execute("ALTER TABLE messages ADD COLUMN code TEXT")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(safety_events)")}
            if "level" not in columns:  # a database from before risk levels
                self._db.execute("ALTER TABLE safety_events ADD COLUMN level TEXT")
        except sqlite3.DatabaseError as e:
            raise MiLlmError(f"{path}: not a usable session database ({e})") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- sessions

    def _row(self, session_id: str) -> Session | None:
        row = self._db.execute(
            "SELECT id, owner, created, updated, language, flagged, flag_category, flagged_at, flag_count "
            "FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        return Session(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8])

    def get(self, session_id: str, owner: str) -> Session:
        """The session, or SessionNotFound (also when it belongs to another owner)."""
        with self._lock:
            s = self._row(session_id)
        if s is None or s.owner != owner:
            raise SessionNotFound(f"no session {session_id!r}")
        return s

    def open(self, session_id: str, owner: str, language: str | None = None) -> Session:
        """The session, created when new; SessionNotFound when another owner has it."""
        check_session_id(session_id)
        now = time.time()
        with self._lock:
            s = self._row(session_id)
            if s is None:
                self._db.execute(
                    "INSERT INTO sessions (id, owner, created, updated, language) VALUES (?, ?, ?, ?, ?)",
                    (session_id, owner, now, now, language),
                )
                s = self._row(session_id)
        assert s is not None
        if s.owner != owner:
            raise SessionNotFound(f"no session {session_id!r}")
        return s

    def history(self, session_id: str) -> list[dict[str, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT role, content, safety, code FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        out = []
        for role, content, safety, code in rows:
            m = {"role": role, "content": content}
            if safety:
                m["safety"] = safety
            if code:
                m["code"] = code
            out.append(m)
        return out

    def append(self, session_id: str, messages: list[dict[str, str]], language: str | None = None) -> None:
        """Append turns atomically (a user turn and its reply go in together)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = self._db.execute(
                    "SELECT COALESCE(MAX(seq), -1) FROM messages WHERE session_id = ?", (session_id,)
                ).fetchone()
                for m in messages:
                    seq += 1
                    self._db.execute(
                        "INSERT INTO messages (session_id, seq, role, content, created, safety, code) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (session_id, seq, m["role"], m["content"], now, m.get("safety"), m.get("code")),
                    )
                self._db.execute(
                    "UPDATE sessions SET updated = ?, language = COALESCE(language, ?) WHERE id = ?",
                    (now, language, session_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def flag(self, session_id: str, category: str, rule: str | None, level: str = "high") -> None:
        """Mark the session as having had a crisis message (kept across /reset)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE sessions SET flagged = 1, flag_category = COALESCE(flag_category, ?), "
                "flagged_at = COALESCE(flagged_at, ?), flag_count = flag_count + 1, updated = ? WHERE id = ?",
                (category, now, now, session_id),
            )
            self._db.execute(
                "INSERT INTO safety_events (session_id, created, category, rule, level) VALUES (?, ?, ?, ?, ?)",
                (session_id, now, category, rule, level),
            )

    def reset(self, session_id: str) -> None:
        """Forget the conversation text; the safety flag and events stay."""
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    def flagged_sessions(self) -> list[Session]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM sessions WHERE flagged = 1 ORDER BY flagged_at")]
            return [s for s in (self._row(i) for i in ids) if s is not None]

    def events(self, session_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT created, category, rule, level FROM safety_events WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).fetchall()
        return [
            {"created": int(c), "category": cat, "rule": rule, "level": level or "high"} for c, cat, rule, level in rows
        ]
