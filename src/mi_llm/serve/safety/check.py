"""`mi-llm safety check`: classify every message of a JSONL file for crisis content.

A line is `{id, text, language?, history?}` (`history`: the user's previous messages, oldest
first); the output line is `{id, crisis, level, category, subcategory, score, matched, ...}`
(the classifier's result without its text-bearing fields). Every input line is checked
before the first is classified, so a bad file fails at once with FILE:LINE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import iter_jsonl, write_jsonl
from mi_llm.serve.safety.classifier import NONE, CrisisClassifier
from mi_llm.serve.safety.risk import RiskClassifier, default_risk_classifier

LANGUAGES = (None, "zh", "en")


@dataclass
class CheckSummary:
    output: Path
    lines: int
    counts: dict[str, int] = field(default_factory=dict)  # category -> lines

    @property
    def crisis(self) -> int:
        return sum(n for category, n in self.counts.items() if category != NONE)


def read_messages(path: str | Path, language: str | None = None) -> list[tuple[Any, str, str | None, list[str]]]:
    """(id, text, language, history) per line; `language` is for lines without one (None: detected)."""
    if language not in LANGUAGES:
        raise MiLlmError("--language must be zh or en")
    rows = []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj.get("text"), str):
            raise InputError(path, "'text' must be a string", lineno)
        if "id" not in obj:
            raise InputError(path, "missing 'id'", lineno)
        lang = obj.get("language") or language
        if lang not in LANGUAGES:
            raise InputError(path, "'language' must be zh or en", lineno)
        history = obj.get("history") or []
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            raise InputError(path, "'history' must be a list of strings", lineno)
        rows.append((obj["id"], obj["text"], lang, history))
    return rows


def check_file(
    input: str | Path,
    output: str | Path,
    language: str | None = None,
    *,
    classifier: CrisisClassifier | RiskClassifier | None = None,
    on_start: Callable[[int], None] | None = None,
    on_line: Callable[[], None] | None = None,
) -> CheckSummary:
    """Classify every line of `input` into `output`; on_start(total) once the input is checked."""
    rows = read_messages(input, language)
    clf = classifier or default_risk_classifier()
    if on_start:
        on_start(len(rows))
    results = []
    counts: dict[str, int] = {}
    for rid, text, lang, history in rows:
        res = clf.classify(text, lang, history) if isinstance(clf, RiskClassifier) else clf.classify(text, lang)
        d = res.to_dict()
        d.pop("suppressed", None)
        results.append({"id": rid, **d})
        counts[res.category] = counts.get(res.category, 0) + 1
        if on_line:
            on_line()
    n = write_jsonl(output, results)
    return CheckSummary(Path(output), n, counts)
