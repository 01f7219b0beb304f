"""Importers: one module per source format, each registering its `import_path` under its
source name(s) in `IMPORTERS` (`@IMPORTERS.register("annomi")`).

An importer is a function `(path: Path) -> Iterator[Dialogue]` that yields raw
dialogues; normalisation (merging, dropping) is applied afterwards by `import_corpus`.
`import_source` is what the pipeline and `mi-llm data import` call: a registered importer
or the bundled demo corpus, with the language override.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

# Importing each module registers its source(s), in this order (the order of the choices).
# isort: off
from mi_llm.corpus.importers import (  # noqa: F401
    cpsycound,
    cpsycoune,
    smile,
    psydt,
    annomi,
    mibot,
    sharegpt,
    openai_messages,
    dialogues,
)

# isort: on
from mi_llm.corpus.importers._common import IMPORTERS
from mi_llm.corpus.normalize import NormalizeOptions, NormalizeStats, normalize
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError

Importer = Callable[[Path], Iterator[Dialogue]]

SOURCES = IMPORTERS  # the source names: `for s in SOURCES`, `s in SOURCES`
# Not an importer: the corpus bundled in mi_llm.resources (no path; language and style pick its parts).
DEMO = "demo"


def get_importer(source: str) -> Importer:
    return IMPORTERS.get(source)


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


def source_files(
    source: str, path: str | Path | None, language: str | None = None, style: str | None = None
) -> list[Path]:
    """The files or folder a source reads (what the pipeline fingerprints)."""
    if source == DEMO:
        from mi_llm.resources import demo_files

        return demo_files(language, style)
    return [Path(path)]  # type: ignore[arg-type]


def import_source(
    source: str,
    path: str | Path | None,
    opts: NormalizeOptions | None = None,
    *,
    language: str | None = None,
    style: str | None = None,
) -> tuple[list[Dialogue], NormalizeStats]:
    """One corpus, normalised: `import_corpus(source, path)`, or the bundled demo corpus.

    For the demo corpus `language` and `style` pick its parts (`path` is not read); for any
    other source `language` is given to every dialogue (for sources that do not say it).
    """
    if source == DEMO:
        from mi_llm.resources import demo_dialogues

        opts = opts or NormalizeOptions()
        stats = NormalizeStats()
        return [n for d in demo_dialogues(language, style) if (n := normalize(d, opts, stats))], stats
    if path is None:
        raise MiLlmError(f"source {source!r} needs a path")
    imported, stats = import_corpus(source, path, opts)
    if language:
        imported = [d.model_copy(update={"language": language}) for d in imported]
    return imported, stats
