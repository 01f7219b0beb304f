"""Importers: one module per source format, each registered under its source name.

An importer is a function `(path: Path) -> Iterator[Dialogue]` that yields raw
dialogues; normalisation (merging, dropping) is applied afterwards by `import_corpus`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterator

from mi_llm.corpus.normalize import NormalizeOptions, NormalizeStats, normalize
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError

Importer = Callable[[Path], Iterator[Dialogue]]

# source name -> module under mi_llm.corpus.importers defining `import_path`
SOURCES: dict[str, str] = {
    "cpsycound": "cpsycound",
    "cpsycoune": "cpsycoune",
    "smile": "smile",
    "psydt": "psydt",
    "annomi": "annomi",
    "mibot": "mibot",
    "sharegpt": "sharegpt",
    "llamafactory": "sharegpt",
    "openai": "openai_messages",
    "dialogues": "dialogues",
}


def get_importer(source: str) -> Importer:
    if source not in SOURCES:
        raise MiLlmError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    module = importlib.import_module(f"mi_llm.corpus.importers.{SOURCES[source]}")
    return module.import_path


def import_corpus(
    source: str, path: str | Path, opts: NormalizeOptions | None = None
) -> tuple[list[Dialogue], NormalizeStats]:
    """Import every dialogue under `path` and normalise it; returns dialogues and counts."""
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long to look up
        raise MiLlmError(f"{path}: {e.strerror or e}") from None
    if not exists:
        raise MiLlmError(f"{path}: no such file or folder")
    opts = opts or NormalizeOptions()
    stats = NormalizeStats()
    out = []
    seen: set[str] = set()
    for d in get_importer(source)(path):
        # The importers locate repeats themselves; this keeps any new one from writing a
        # dialogues file that the next stage would refuse.
        if d.id in seen:
            raise MiLlmError(f"{path}: dialogue id {d.id!r} occurs twice")
        seen.add(d.id)
        nd = normalize(d, opts, stats)
        if nd is not None:
            out.append(nd)
    if not out:  # an empty dialogues file would only fail later, further from the cause
        why = f": all {stats.skipped_dialogues} had only blank turns" if stats.skipped_dialogues else ""
        raise MiLlmError(f"{path}: no dialogues to import{why}")
    return out, stats
