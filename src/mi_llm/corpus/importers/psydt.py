"""PsyDTCorpus: a JSON array or JSONL of {"id", "normalizedTag", "messages": [{role, content}]}.

user -> client, assistant -> counselor; the system prompt (which describes the therapy)
goes to meta["system"], normalizedTag to topic. The path may also be a folder of such files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import IMPORTERS, SeenIds, find_files, iter_records, json_type, require_str
from mi_llm.corpus.language import detect_language
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError

SOURCE = "psydt"
_ROLES = {"user": "client", "assistant": "counselor"}


@IMPORTERS.register("psydt")
def import_path(path: Path) -> Iterator[Dialogue]:
    seen = SeenIds()
    for f in find_files(path, ["*.json", "*.jsonl"], "PsyDTCorpus JSON/JSONL files"):
        for line, rec in iter_records(f):
            d = parse_record(rec, f, line)
            seen.add(d.id, f, line)
            yield d


def parse_record(rec: dict[str, Any], path: Path, line: int) -> Dialogue:
    if "id" not in rec or rec["id"] in (None, ""):
        raise InputError(path, "missing key 'id'", line)
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise InputError(path, f"'id' should be a string or an integer, got {json_type(rid)}", line)
    tag = rec.get("normalizedTag")
    if tag is not None and (isinstance(tag, bool) or not isinstance(tag, (str, int, float))):
        raise InputError(path, f"'normalizedTag' should be a string, got {json_type(tag)}", line)
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
    meta: dict[str, Any] = {"file": path.name}
    if system:
        meta["system"] = "\n".join(system)
    return Dialogue(
        id=f"{SOURCE}-{rec['id']}",
        source=SOURCE,
        language=detect_language(t.text for t in turns),
        topic=str(tag) if tag not in (None, "") else None,
        style="raw",
        turns=turns,
        meta=meta,
    )
