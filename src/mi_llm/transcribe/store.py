"""The run's outputs: append-only, one complete record per line, resumable after any crash.

- `<output>`: one rewritten dialogue per line.
- `<output>.failed.jsonl`: one line per dialogue that could not be rewritten, with the reason.

Each record is written with a single `write` of a whole line and flushed to disk, so a
kill leaves at most one torn last line, which the next run cuts off before it appends
(that dialogue is then done again, from the cache). A lock on the output keeps two runs
from writing the same file.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import atomic_writer, iter_jsonl, repair_torn_tail, to_json_line
from mi_llm.layout import FAILED_SUFFIX, beside

log = logging.getLogger(__name__)

# Failures of these kinds are tried again by the next run without being asked:
# the request never got an answer (server down, rate limited for too long).
RETRY_ON_RESUME = ("api",)


def failures_path(output: Path) -> Path:
    return beside(output, FAILED_SUFFIX)


def _read_ids(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    if not path.is_file():
        return out
    for lineno, obj in iter_jsonl(path):
        rid = obj.get("id")
        if not isinstance(rid, str):
            raise InputError(path, "record without an 'id'", lineno)
        if rid in out:
            raise InputError(
                path, f"id {rid!r} repeats line {out[rid][0]}: this file was not written by one run at a time", lineno
            )
        out[rid] = (lineno, obj)
    return out


class ResultStore:
    def __init__(self, output: str | Path, failures: str | Path | None = None):
        self.output = Path(output)
        self.failures = Path(failures) if failures else failures_path(self.output)
        self.done: set[str] = set()
        self.failed: dict[str, dict[str, Any]] = {}
        self.repaired_bytes = 0
        self._out_fd: int | None = None
        self._fail_fd: int | None = None

    def open(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.output, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MiLlmError(f"{self.output}: another mi-llm transcribe is writing this file") from None
        self._out_fd = fd
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        self.repaired_bytes = repair_torn_tail(self.output) + repair_torn_tail(self.failures)
        done = _read_ids(self.output)
        failed = {k: v[1] for k, v in _read_ids(self.failures).items()}
        both = sorted(set(done) & set(failed))
        if both:
            # A dialogue first failed, then succeeded on --retry-failed before the failure file
            # was rewritten: the good result wins.
            log.warning("%d dialogue(s) are both in the output and the failure report; keeping the output", len(both))
            failed = {k: v for k, v in failed.items() if k not in done}
            self._rewrite_failures(failed)
        self.done = set(done)
        self.failed = failed

    def _rewrite_failures(self, failed: dict[str, dict[str, Any]]) -> None:
        if self._fail_fd is not None:
            os.close(self._fail_fd)
            self._fail_fd = None
        if not failed:
            self.failures.unlink(missing_ok=True)
            return
        with atomic_writer(self.failures) as f:
            for rec in failed.values():
                f.write(to_json_line(rec) + "\n")

    def forget_failures(self, ids: set[str]) -> None:
        """Take these ids out of the failure report (atomically) so they are tried again."""
        ids = ids & set(self.failed)
        if ids:
            self.failed = {k: v for k, v in self.failed.items() if k not in ids}
            self._rewrite_failures(self.failed)

    @staticmethod
    def _append(fd: int, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)

    def append_ok(self, dialogue: Dialogue) -> None:
        assert self._out_fd is not None, "open() first"
        if dialogue.id in self.done:
            raise RuntimeError(f"dialogue {dialogue.id!r} written twice")
        self._append(self._out_fd, to_json_line(dialogue))
        self.done.add(dialogue.id)

    def append_failure(self, record: dict[str, Any]) -> None:
        if self._fail_fd is None:
            self._fail_fd = os.open(self.failures, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._append(self._fail_fd, to_json_line(record))
        self.failed[record["id"]] = record

    def close(self) -> None:
        for fd in (self._fail_fd, self._out_fd):
            if fd is not None:
                os.close(fd)  # closing releases the lock
        self._fail_fd = self._out_fd = None

    def __enter__(self) -> ResultStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
