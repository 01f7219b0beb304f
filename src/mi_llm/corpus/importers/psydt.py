"""PsyDTCorpus: a JSON array or JSONL of {"id", "normalizedTag", "messages": [{role, content}]}.

user -> client, assistant -> counselor; the system prompt (which describes the therapy)
goes to meta["system"], normalizedTag to topic. The path may also be a folder of such files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mi_llm.corpus.importers._common import detect_language, find_files, iter_records, require_str
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError

SOURCE = "psydt"
_ROLES = {"user": "client", "assistant": "counselor"}


def import_path(path: Path) -> Iterator[Dialogue]:
    seen: dict[str, tuple[Path, int]] = {}
    for f in find_files(path, ["*.json", "*.jsonl"], "PsyDTCorpus JSON/JSONL files"):
        for line, rec in iter_records(f):
            d = parse_record(rec, f, line)
            if d.id in seen:
                p, ln = seen[d.id]
                raise InputError(f, f"dialogue id {d.id!r} repeats {p.name}:{ln}", line)
            seen[d.id] = (f, line)
            yield d


def parse_record(rec: dict[str, Any], path: Path, line: int) -> Dialogue:
    if "id" not in rec or rec["id"] in (None, ""):
        raise InputError(path, "missing key 'id'", line)
    messages = rec.get("messages")
    if not isinstance(messages, list):
        raise InputError(path, "missing key 'messages' (a list of {role, content})", line)
    turns: list[Turn] = []
    system: list[str] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]: "
        if not isinstance(m, dict):
            raise InputError(path, f"{where}expected an object {{role, content}}", line)
        role = require_str(m, "role", path, line, where)
        content = require_str(m, "content", path, line, where)
        if role == "system":
            system.append(content)
        elif role in _ROLES:
            turns.append(Turn(role=_ROLES[role], text=content))
        else:
            raise InputError(path, f"{where}unknown role {role!r} (expected system, user or assistant)", line)
    if not turns:
        raise InputError(path, "no user/assistant messages", line)
    tag = rec.get("normalizedTag")
    meta: dict[str, Any] = {"file": path.name}
    if system:
        meta["system"] = "\n".join(system)
    return Dialogue(
        id=f"{SOURCE}-{rec['id']}",
        source=SOURCE,
        language=detect_language(t.text for t in turns),  # type: ignore[arg-type]
        topic=str(tag) if tag not in (None, "") else None,
        style="raw",
        turns=turns,
        meta=meta,
    )
