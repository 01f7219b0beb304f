"""Prompts kept as data files beside the code, one per language."""

from __future__ import annotations

from importlib import resources

from mi_llm.errors import MiLlmError


def load_prompt(name: str, language: str) -> str:
    """Text of `prompts/<name>.<language>.txt`, stripped of surrounding whitespace."""
    res = resources.files("mi_llm.prompts").joinpath(f"{name}.{language}.txt")
    if not res.is_file():
        raise MiLlmError(f"no prompt {name!r} for language {language!r}")
    return res.read_text(encoding="utf-8").strip()
