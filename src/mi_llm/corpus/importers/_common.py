"""Helpers shared by the importers: file discovery, located JSON reading (the language guess
is `mi_llm.corpus.language.detect_language`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.language import detect_language
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import NESTED_TOO_DEEPLY, check_json_text, iter_jsonl, too_deep_line
from mi_llm.registry import Registry

# source name -> `import_path(path) -> Iterator[Dialogue]`, each registered by its module
IMPORTERS: Registry[Callable[[Path], Iterator[Dialogue]]] = Registry("source")

_DIGITS = re.compile(r"(\d+)")
_WS = re.compile(r"\s")


def natural_key(path: Path) -> list[Any]:
    """Sort key that puts case_2 before case_10."""
    return [int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(path.name)]


def find_files(path: Path, patterns: Iterable[str], what: str) -> list[Path]:
    """`path` itself if it is a file, else the files under it matching any pattern, naturally sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MiLlmError(f"{path}: no such file or folder")
    found: set[Path] = set()
    for pattern in patterns:
        # Hidden files (a downloader's .mi-llm-download.json) and partial downloads are not data.
        found.update(
            p
            for p in path.glob(pattern)
            if p.is_file()
            and not p.name.endswith(".part")
            and not any(x.startswith(".") for x in p.relative_to(path).parts)
        )
    if not found:
        raise MiLlmError(f"{path}: no {what} found (looked for {', '.join(patterns)})")
    return sorted(found, key=lambda p: [*natural_key(p.parent), *natural_key(p)])


def read_text(path: Path) -> str:
    """UTF-8 text (a byte-order mark is dropped); undecodable bytes give a located error."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(path, f"not valid UTF-8 ({e.reason})", line) from None


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def iter_json_array(path: Path, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line where the item starts, item) for a file holding one top-level JSON array."""
    text = read_text(path) if text is None else text
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise InputError(path, "expected a JSON array", line_of(text, pos))
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        _expect_end(path, text, pos + 1)
        return
    while True:
        item, end = _decode_at(path, text, pos, decoder)
        check_json_text(item, text[pos:end], path, line_of(text, pos))
        yield line_of(text, pos), item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            _expect_end(path, text, pos + 1)
            return
        raise InputError(path, "invalid JSON: expected ',' or ']' after an array item", line_of(text, pos))


def iter_json_object(path: Path, text: str | None = None) -> Iterator[tuple[int, str, Any]]:
    """Yield (line where the key is, key, value) for a file holding one top-level JSON object."""
    text = read_text(path) if text is None else text
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "{":
        raise InputError(path, "expected a JSON object", line_of(text, pos))
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        _expect_end(path, text, pos + 1, "object")
        return
    while True:
        key_start, key_line = pos, line_of(text, pos)
        if pos >= len(text) or text[pos] != '"':
            raise InputError(path, "invalid JSON: expected a quoted key", key_line)
        key, pos = _decode_at(path, text, pos, decoder)
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] != ":":
            raise InputError(path, "invalid JSON: expected ':' after a key", line_of(text, pos))
        pos = _skip_ws(text, pos + 1)
        value, pos = _decode_at(path, text, pos, decoder)
        check_json_text([key, value], text[key_start:pos], path, key_line)
        yield key_line, key, value
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "}":
            _expect_end(path, text, pos + 1, "object")
            return
        raise InputError(path, "invalid JSON: expected ',' or '}' after a member", line_of(text, pos))


def _decode_at(path: Path, text: str, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    """One JSON value starting at `pos` (value, end), its errors located by line."""
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except RecursionError:
        raise InputError(path, NESTED_TOO_DEEPLY, too_deep_line(text, line_of(text, pos), pos)) from None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _expect_end(path: Path, text: str, pos: int, what: str = "array") -> None:
    pos = _skip_ws(text, pos)
    if pos < len(text):
        raise InputError(path, f"invalid JSON: extra data after the {what}", line_of(text, pos))


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) from a JSON array file or a JSONL file, whichever the content is.

    A *.jsonl file is always JSON Lines: a first line that happens to be an array is a bad
    line 1, not a whole-file array whose errors would point elsewhere."""
    text = read_text(path)
    start = _skip_ws(text, 0)
    if path.suffix.lower() != ".jsonl" and start < len(text) and text[start] == "[":
        for line, item in iter_json_array(path, text):
            if not isinstance(item, dict):
                raise InputError(path, f"expected a JSON object, got {type(item).__name__}", line)
            yield line, item
        return
    yield from iter_jsonl(path)


def require_str(obj: dict[str, Any], key: str, path: Path, line: int | None, where: str = "") -> str:
    if key not in obj:
        raise InputError(path, f"{where}missing key {key!r}", line)
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(path, f"{where}{key!r} should be a string, got {type(value).__name__}", line)
    return value


class SeenIds:
    """Dialogue ids imported so far and where each came from: the dialogues file an import
    writes must not repeat an id (the next stage refuses it), so a repeat is located here."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Path, int | None]] = {}

    def add(self, dialogue_id: str, path: Path, line: int | None) -> None:
        if dialogue_id in self._seen:
            p, ln = self._seen[dialogue_id]
            where = p.name if ln is None else f"{p.name}:{ln}"
            raise InputError(path, f"dialogue id {dialogue_id!r} repeats {where}", line)
        self._seen[dialogue_id] = (path, line)


def slug(text: str) -> str:
    """A lowercase id part: 'Family Relationship' -> 'family-relationship'."""
    s = re.sub(r"[^0-9a-z\u4e00-\u9fff]+", "-", text.lower()).strip("-")
    return s or "x"


def array_item_line(text: str, key: str, index: int) -> int | None:
    """Line of item `index` of the first array under `"key":` in a JSON text (for error messages)."""
    m = re.search(r'"' + re.escape(key) + r'"\s*:\s*\[', text)
    if not m:
        return None
    decoder = json.JSONDecoder()
    pos = m.end()
    for i in range(index + 1):
        pos = _skip_ws(text, pos)
        if i == index:
            return line_of(text, pos)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] != ",":
            return None
        pos += 1
    return None


def chat_dialogue(
    source: str,
    path: Path,
    line: int,
    index: int,
    rec: dict[str, Any],
    messages: Any,
    role_key: str,
    content_key: str,
    roles: dict[str, str],
    system_roles: Iterable[str],
    system: Any = None,
) -> Dialogue:
    """A dialogue from chat messages (sharegpt, OpenAI): roles map to client/counselor.

    System messages go to meta["system"]; an id, language, topic or style on the record is
    kept, otherwise the id is `<source>-<file stem>-<record number>` and the language guessed.
    """
    if not isinstance(messages, list):
        raise InputError(path, "expected a list of messages", line)
    system_roles = set(system_roles)
    systems = [system] if isinstance(system, str) and system.strip() else []
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        where = f"message {i}: "
        if not isinstance(m, dict):
            raise InputError(path, f"{where}expected an object", line)
        if role_key not in m:
            raise InputError(path, f"{where}missing key {role_key!r}", line)
        role = m[role_key]
        # An object or list as the role is unhashable: say so instead of a TypeError.
        if not isinstance(role, str):
            raise InputError(path, f"{where}{role_key!r} should be a string, got {json_type(role)}", line)
        content = _content(m.get(content_key, None), path, line, where, content_key)
        if role in system_roles:
            systems.append(content)
        elif role in roles:
            turn_meta = {"weight": m["weight"]} if "weight" in m else {}
            turns.append(Turn(role=roles[role], text=content, meta=turn_meta))
        else:
            # speaker names may come from dataset_info.json: keep the message on one line
            known = ", ".join(r if r.isprintable() else repr(r) for r in [*roles, *sorted(system_roles)])
            raise InputError(path, f"{where}unknown speaker {role!r} (expected one of {known})", line)
    if not turns:
        raise InputError(path, "no client or counselor messages", line)
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise InputError(path, f"'id' should be a string or an integer, got {json_type(rid)}", line)
    language = rec.get("language")
    if language not in ("zh", "en"):
        language = detect_language(t.text for t in turns)
    style = rec.get("style") if rec.get("style") in ("raw", "mi") else "raw"
    meta: dict[str, Any] = {"file": path.name, "record": index}
    if systems:
        meta["system"] = "\n".join(systems)
    return Dialogue(
        id=str(rid) if rid not in (None, "") else f"{source}-{path.stem}-{index}",
        source=source,
        language=language,
        topic=rec["topic"] if isinstance(rec.get("topic"), str) else None,
        style=style,
        turns=turns,
        meta=meta,
    )


def json_type(value: Any) -> str:
    """JSON's name for a value's type, as a user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _content(value: Any, path: Path, line: int, where: str, key: str) -> str:
    """Message text: a string, or OpenAI's list of parts of which only text is accepted."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for p in value:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise InputError(path, f"{where}only text content parts are supported", line)
        return "".join(parts)
    if value is None:
        raise InputError(path, f"{where}missing key {key!r}", line)
    raise InputError(path, f"{where}{key!r} should be a string, got {type(value).__name__}", line)
