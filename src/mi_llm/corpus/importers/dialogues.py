"""mi-llm's own dialogues JSONL (the canonical schema), read back to be normalised again.

The path may be one file or a folder of *.jsonl files; every line is validated, and a
dialogue id may appear only once across all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mi_llm.corpus.importers._common import IMPORTERS, find_files
from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.errors import MiLlmError


@IMPORTERS.register("dialogues")
def import_path(path: Path) -> Iterator[Dialogue]:
    seen: dict[str, Path] = {}
    for f in find_files(path, ["*.jsonl"], "dialogues JSONL files"):
        for d in read_dialogues(f):
            if d.id in seen:
                raise MiLlmError(f"{f}: dialogue id {d.id!r} also appears in {seen[d.id]}")
            seen[d.id] = f
            yield d
