"""SMILE / SmileChat: a folder of `<id>.json`, each a list of {role, content, annotation}.

role is `client` or `counselor`. `annotation` splits a turn into sentences with a label
that is empty in the released data; non-empty labels, if any, are kept in the turn's meta.
Some dialogues have no counselor turn at all: they are imported (and give no sample).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import IMPORTERS, find_files, iter_json_array, json_type, require_str
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError

SOURCE = "smile"
_ROLES = {"client": "client", "counselor": "counselor"}


@IMPORTERS.register("smile")
def import_path(path: Path) -> Iterator[Dialogue]:
    # The upstream repository keeps the dialogues under data/.
    if path.is_dir() and (path / "data").is_dir() and not any(not p.name.startswith(".") for p in path.glob("*.json")):
        path = path / "data"
    for f in find_files(path, ["*.json"], "SMILE JSON files"):
        yield parse_file(f)


def parse_file(path: Path) -> Dialogue:
    turns: list[Turn] = []
    for line, item in iter_json_array(path):
        if not isinstance(item, dict):
            raise InputError(path, f"expected an object {{role, content}}, got {type(item).__name__}", line)
        role = require_str(item, "role", path, line)
        if role not in _ROLES:
            raise InputError(path, f"unknown role {role!r} (expected client or counselor)", line)
        text = require_str(item, "content", path, line)
        meta: dict[str, Any] = {}
        annotation = item.get("annotation")
        if annotation is not None and not isinstance(annotation, list):
            raise InputError(path, f"'annotation' should be a list, got {json_type(annotation)}", line)
        labels = [a for a in annotation or [] if isinstance(a, dict) and a.get("label")]
        if labels:
            meta["annotation"] = labels
        turns.append(Turn(role=_ROLES[role], text=text, meta=meta))
    if not turns:
        raise InputError(path, "empty dialogue")
    return Dialogue(
        id=f"{SOURCE}-{path.stem}", source=SOURCE, language="zh", style="raw", turns=turns, meta={"file": path.name}
    )
