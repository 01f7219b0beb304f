"""Autosave of a coder's work in SQLite, so nothing is lost on reload or server restart.

The file holds health data (the counselor utterances and their codes): it is created
readable by its owner only (mode 0600) before SQLite opens it, so it never exists with
wider permissions; SQLite gives its journal the same mode.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1
);
"""


class AutosaveStore:
    """One coder's saved session states, keyed by session id; each write is committed at once."""

    def __init__(self, path: str | Path, coder: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise MiLlmError(f"{self.path}: not a usable autosave file ({e})") from None
        owner = self._meta("coder")
        if owner is None:
            self._set_meta("coder", coder)
        elif owner != coder:
            raise MiLlmError(
                f"{self.path} holds {owner!r}'s coding, not {coder!r}'s: use --coder-name {owner} "
                "or another --out for a second coder"
            )
        self.coder = coder

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get(self, session_id: str) -> tuple[dict[str, Any], str] | None:
        """(state, saved-at ISO time) or None when the coder has not saved this session."""
        with self._lock:
            row = self._db.execute("SELECT state, updated_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def put(self, session_id: str, state: dict[str, Any]) -> str:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO sessions (id, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, "
                "revision = sessions.revision + 1",
                (session_id, json.dumps(state, ensure_ascii=False), now),
            )
        return now

    def saved_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM sessions")}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _create_private(path: Path) -> None:
    """Create `path` with mode 0600 in one step (O_EXCL: no window with the umask's mode);
    an existing file open to others (an autosave of an older version) is narrowed to 0600."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return
    except FileExistsError:
        pass
    except OSError as e:
        raise MiLlmError(f"{path}: cannot create the autosave file ({e.strerror})") from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        try:
            os.chmod(path, 0o600)
        except OSError as e:
            raise MiLlmError(
                f"{path} is open to other users (mode {mode:04o}) and cannot be narrowed ({e.strerror}): "
                f"run chmod 600 {path}"
            ) from None
        log.warning("%s was open to other users (mode %04o): now 0600", path, mode)
