"""CPsyCounE: topic folders of JSON lists of strings `求助者：…` (client) / `支持者：…` (counselor).

The path may be the CPsyCounE folder (topic = each sub-folder's name), one topic folder
(topic = its name) or a single JSON file (topic = its folder's name).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mi_llm.corpus.importers._common import IMPORTERS, SeenIds, find_files, iter_json_array, slug
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError

SOURCE = "cpsycoune"
_ROLES = {"求助者": "client", "支持者": "counselor"}
_TAG = re.compile(r"^\s*([^\s：:]{1,10}?)\s*[：:]\s*")


@IMPORTERS.register("cpsycoune")
def import_path(path: Path) -> Iterator[Dialogue]:
    seen = SeenIds()
    for f in find_files(path, ["*/*.json", "*.json"], "CPsyCounE JSON files"):
        d = parse_file(f)
        seen.add(d.id, f, None)  # two topic folders may slug to one name
        yield d


def parse_file(path: Path) -> Dialogue:
    topic = path.parent.name
    turns: list[Turn] = []
    for line, item in iter_json_array(path):
        if not isinstance(item, str):
            raise InputError(path, f"expected a string '求助者：…' or '支持者：…', got {type(item).__name__}", line)
        m = _TAG.match(item)
        if not m or m.group(1) not in _ROLES:
            found = m.group(1) if m else item[:10]
            raise InputError(path, f"unknown speaker tag {found!r} (expected 求助者 or 支持者)", line)
        turns.append(Turn(role=_ROLES[m.group(1)], text=item[m.end() :].strip()))
    if not turns:
        raise InputError(path, "empty dialogue")
    return Dialogue(
        id=f"{SOURCE}-{slug(topic)}-{path.stem}",
        source=SOURCE,
        language="zh",
        topic=topic,
        style="raw",
        turns=turns,
        meta={"file": f"{topic}/{path.name}"},
    )
