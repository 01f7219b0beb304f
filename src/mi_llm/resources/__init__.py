"""Bundled resources: the demo corpus written for this project (see resources/demo/README.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mi_llm.corpus.schema import Dialogue, read_dialogues


def demo_files(language: str | None = None, style: str | None = None) -> list[Path]:
    """The demo corpus files, `demo/<language>/<style>-<part>.jsonl`, in a stable order."""
    root = Path(str(resources.files("mi_llm.resources").joinpath("demo")))
    langs = [language] if language else ["zh", "en"]
    out: list[Path] = []
    for lang in langs:
        pattern = f"{style}-*.jsonl" if style else "*.jsonl"
        out += sorted((root / lang).glob(pattern))
    return out


def demo_dialogues(language: str | None = None, style: str | None = None) -> list[Dialogue]:
    return [d for f in demo_files(language, style) for d in read_dialogues(f)]
