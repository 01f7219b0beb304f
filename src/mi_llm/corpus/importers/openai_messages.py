"""OpenAI chat fine-tuning JSONL: one {"messages": [{"role", "content"}]} record per line.

user -> client, assistant -> counselor, system/developer -> meta["system"]. Content may be
a string or a list of text parts. A JSON array of such records is read too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mi_llm.corpus.importers._common import IMPORTERS, SeenIds, chat_dialogue, find_files, iter_records
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError

SOURCE = "openai"
_ROLES = {"user": "client", "assistant": "counselor"}
_SYSTEM = ("system", "developer")


@IMPORTERS.register("openai")
def import_path(path: Path) -> Iterator[Dialogue]:
    seen = SeenIds()
    for f in find_files(path, ["*.jsonl", "*.json"], "OpenAI chat JSONL files"):
        for index, (line, rec) in enumerate(iter_records(f), start=1):
            if "messages" not in rec:
                raise InputError(f, "missing key 'messages' (a list of {role, content})", line)
            d = chat_dialogue(SOURCE, f, line, index, rec, rec["messages"], "role", "content", _ROLES, _SYSTEM)
            seen.add(d.id, f, line)
            yield d
