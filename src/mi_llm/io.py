"""JSONL reading with located errors, and atomic writes (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

from mi_llm.errors import InputError, MiLlmError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(err: ValidationError) -> str:
    """One line from pydantic's error list: 'turns.2.role: Input should be ...'."""
    parts = []
    for e in err.errors():
        loc = ".".join(_loc_part(x) for x in e["loc"]) or "record"
        parts.append(f"{loc}: {e['msg']}")
    return " ".join("; ".join(parts).split())  # one line, whatever the messages hold


def _loc_part(x: Any) -> str:
    """A key of the input, quoted when it holds a newline or another unprintable character
    (the message must stay one readable line)."""
    s = str(x)
    return s if s.isprintable() and s.strip() == s else repr(s)


# A \uD800-\uDFFF escape that is not half of a pair decodes to a lone surrogate, which
# no UTF-8 file can hold: every later write of that text would fail.
_SURROGATE_ESCAPE = re.compile(r"(\\+)u([dD][89a-fA-F][0-9a-fA-F]{2})")
_LOW_ESCAPE = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(obj: Any) -> bool:
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if any("\ud800" <= ch <= "\udfff" for ch in value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _lone_surrogate_pos(text: str) -> int:
    """Where the first unpaired surrogate escape is in a JSON text (0 if not found)."""
    paired_until = -1
    for m in _SURROGATE_ESCAPE.finditer(text):
        if len(m.group(1)) % 2 == 0 or m.start() < paired_until:  # an escaped backslash, or a pair's low half
            continue
        code = int(m.group(2), 16)
        if code <= 0xDBFF and _LOW_ESCAPE.match(text, m.end()):
            paired_until = m.end() + 6
            continue
        return m.start() + len(m.group(1)) - 1
    return 0


# Deeper JSON than this is garbage for every schema here, and pydantic cannot write much
# deeper values back (its serializer stops at a fixed depth): refuse it on read.
MAX_JSON_DEPTH = 100
NESTED_TOO_DEEPLY = f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep"


def _deeper_than(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def too_deep_line(text: str, line: int | None, start: int = 0) -> int | None:
    """The line (counted from `line`, where `text` starts) on which the JSON in `text` goes
    deeper than MAX_JSON_DEPTH, for the error message; `line` itself if it never does."""
    if line is None:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return line + text.count("\n", start, i)
        elif ch in "]}":
            depth -= 1
    return line


def check_json_text(obj: Any, text: str, path: str | Path, line: int | None) -> None:
    """Refuse decoded JSON that no later stage could write back: nested deeper than
    MAX_JSON_DEPTH, or holding a lone surrogate escape. `text` is its JSON source and `line`
    the line `text` starts on. Cheap: each check runs only when `text` could fail it."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(obj, MAX_JSON_DEPTH):
        raise InputError(path, NESTED_TOO_DEEPLY, too_deep_line(text, line))
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        if line is not None:
            line += text.count("\n", 0, _lone_surrogate_pos(text))
        raise InputError(path, "invalid JSON: a \\u escape of half a surrogate pair is not a character", line)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad lines raise InputError."""
    path = Path(path)
    if _is_dir(path):
        raise MiLlmError(f"{path}: is a folder, not a JSONL file")
    if not path.is_file():
        raise MiLlmError(f"{path}: no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                # a byte-order mark (Windows editors write one) is not part of the first line
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", lineno) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", lineno) from None
            except RecursionError:
                raise InputError(path, NESTED_TOO_DEEPLY, lineno) from None
            if not isinstance(obj, dict):
                raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
            check_json_text(obj, text, path, lineno)
            yield lineno, obj


def read_models(
    path: str | Path, model: type[M], key: Callable[[M], str] | None = None, what: str = "id", invalid: str = ""
) -> list[M]:
    """Read and validate every line of a JSONL file as `model` (see iter_models)."""
    return list(iter_models(path, model, key, what, invalid))


def iter_models(
    path: str | Path, model: type[M], key: Callable[[M], str] | None = None, what: str = "id", invalid: str = ""
) -> Iterator[M]:
    """Each line validated as `model`; a bad line is `FILE:LINE: <invalid><what is wrong>`. With
    `key`, a key seen on an earlier line is `FILE:LINE: <what> 'k' repeats line N`."""
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            item = model.model_validate(obj)
        except ValidationError as e:
            raise InputError(path, invalid + describe_validation_error(e), lineno) from None
        if key is not None:
            k = key(item)
            if k in seen:
                raise InputError(path, f"{what} {k!r} repeats line {seen[k]}", lineno)
            seen[k] = lineno
        yield item


def _cannot_write(path: Path, e: OSError) -> MiLlmError:
    return MiLlmError(f"{path}: cannot write ({e.strerror or e})")


def _is_dir(path: Path) -> bool:
    """Path.is_dir, except that a path the system refuses to look up (a name too long)
    is a one-line error instead of an OSError."""
    try:
        return path.is_dir()
    except OSError as e:
        raise MiLlmError(f"{path}: {e.strerror or e}") from None


def check_writable(path: str | Path, what: str | None = None) -> None:
    """Fail early, in one line, when `path` cannot become a file: it is a folder, a parent is
    a file, or the nearest existing folder above it is not writable. `what` names the option.
    Checked before slow work so that a typo in -o does not cost a whole run."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    try:
        if path.is_dir():
            raise MiLlmError(f"{where}: is a folder, not a file")
        parent = path.parent
        while not parent.exists():
            if parent == parent.parent:
                break
            parent = parent.parent
    except OSError as e:  # e.g. a name longer than the file system allows
        raise MiLlmError(f"{where}: {e.strerror or e}") from None
    if parent.exists() and not parent.is_dir():
        raise MiLlmError(f"{where}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MiLlmError(f"{where}: cannot write into {parent} (permission denied)")


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file beside `path`; rename over it only if the block succeeds.

    A path that cannot be written (a folder, no permission, a file where a folder should be)
    is a one-line MiLlmError naming it, raised before anything is written."""
    path = Path(path)
    if _is_dir(path):  # os.replace would fail only after all the work
        raise MiLlmError(f"{path}: is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def to_json_line(record: BaseModel | dict[str, Any]) -> str:
    if isinstance(record, BaseModel):
        return record.model_dump_json(exclude_none=True)
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Atomically write records as JSONL; returns the number written."""
    n = 0
    with atomic_writer(path) as f:
        for rec in records:
            f.write(to_json_line(rec) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_writer(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def repair_torn_tail(path: Path) -> int:
    """Cut an incomplete last line of an append-only JSONL file (no newline: the writer was
    killed mid-write), so that the next run can append whole lines; returns the number of
    bytes removed (0 when the file is missing, empty or ends with a newline)."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Scan back for the last newline in chunks (lines can be long).
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = pos + i + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: removed an incomplete last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep
