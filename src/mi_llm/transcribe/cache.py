"""On-disk cache of every LLM call (SQLite), so that no call is ever paid twice.

Key = sha256 of backend + model + prompt version + the exact input messages + the
generation settings. Each answer is committed as soon as it arrives: a run killed at
any moment keeps every answer it received. WAL mode lets a reader look while a run writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    usage_estimated INTEGER NOT NULL DEFAULT 0,
    cost REAL,
    created REAL NOT NULL
)
"""


def call_key(
    backend: str, model: str, prompt_version: str, messages: list[dict[str, str]], settings: dict[str, Any]
) -> str:
    payload = {
        "backend": backend,
        "model": model,
        "prompt_version": prompt_version,
        "messages_sha256": hashlib.sha256(
            json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()
        ).hexdigest(),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class CachedCall:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    cost: float | None


class CallCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> CachedCall | None:
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, usage_estimated, cost FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return CachedCall(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    def put(self, key: str, backend: str, model: str, prompt_version: str, call: CachedCall) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                backend,
                model,
                prompt_version,
                call.text,
                call.finish_reason,
                call.prompt_tokens,
                call.completion_tokens,
                int(call.usage_estimated),
                call.cost,
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        self._db.close()
