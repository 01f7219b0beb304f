"""CPsyCounD: a folder of `case_<N>.txt`, one counseling dialogue each (Chinese).

Turns start with `来访者：` (client) or `心理咨询师：` (counselor), full- or half-width colon,
and are separated by blank lines. Quirks seen in the real files and how they map:

- a speaker suffix: `来访者（程女士）：`, `来访者1：`, `心理咨询师（扮演丈夫）：` -> same role,
  the full tag kept in the turn's meta["speakers"];
- other people on the client side in family or couple sessions (`妈妈：`, `女儿：`, `A：`):
  a paragraph that opens with a short name and a colon -> client turn, name in meta["speakers"];
- untagged lines (numbered advice lists, a second paragraph) continue the current turn;
- a tag right after a tag (`来访者：心理咨询师：…`): an empty turn for the first speaker;
- a line wholly in brackets that is not a turn, `（一段时间后）`, is narration: it is kept
  in the previous turn's meta["stage_directions"], not in the text a model learns from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import IMPORTERS, find_files, read_text
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError

SOURCE = "cpsycound"
_ROLES = {"来访者": "client", "心理咨询师": "counselor"}
_TAG = re.compile(r"^\s*(来访者|心理咨询师)\s*(\d+|[（(][^）)]{0,30}[）)])?\s*[：:]\s*")
# A third party speaking: a short name (letters/Han only, no digits or punctuation).
_OTHER = re.compile(r"^\s*([A-Za-z\u4e00-\u9fff]{1,6})\s*[：:]\s*")
_STAGE = re.compile(r"^\s*[（(][^（）()]*[）)]\s*$")


@IMPORTERS.register("cpsycound")
def import_path(path: Path) -> Iterator[Dialogue]:
    for f in find_files(path, ["case_*.txt"], "CPsyCounD case_N.txt files"):
        yield parse_file(f)


def parse_file(path: Path) -> Dialogue:
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    turns: list[dict[str, Any]] = []
    notes_before: list[str] = []
    paragraph_start = True
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            paragraph_start = True
            continue
        first_in_paragraph, paragraph_start = paragraph_start, False
        m = _TAG.match(line)
        if m:
            rest = line
            # "来访者：心理咨询师：…" (once in CPsyCounD): the first speaker's words are missing;
            # an empty turn keeps the order (normalisation drops it and counts it).
            while m:
                tag = rest[: m.end()].strip().rstrip("：:").strip()
                role, rest = _ROLES[m.group(1)], rest[m.end() :]
                m = _TAG.match(rest)
                turns.append(_turn(role, "" if m else rest, tag, lineno))
            continue
        m = _OTHER.match(line)
        if m and first_in_paragraph and turns:
            turns.append(_turn("client", line[m.end() :], m.group(1), lineno))
            continue
        if _STAGE.match(line):
            (turns[-1]["stage"] if turns else notes_before).append(line.strip())
            continue
        if not turns:
            raise InputError(path, "text before the first speaker tag (来访者：/心理咨询师：)", lineno)
        turns[-1]["lines"].append(line.strip())
    if not turns:
        raise InputError(path, "no turns found (lines start with 来访者： or 心理咨询师：)")
    meta: dict[str, Any] = {"file": path.name}
    if notes_before:
        meta["stage_directions"] = notes_before
    return Dialogue(
        id=f"{SOURCE}-{path.stem}",
        source=SOURCE,
        language="zh",
        style="raw",
        turns=[_to_turn(t) for t in turns],
        meta=meta,
    )


def _turn(role: str, first: str, tag: str, lineno: int) -> dict[str, Any]:
    return {"role": role, "lines": [first.strip()], "tag": tag, "line": lineno, "stage": []}


def _to_turn(t: dict[str, Any]) -> Turn:
    meta: dict[str, Any] = {"line": t["line"]}
    if t["tag"] not in _ROLES:
        meta["speakers"] = [t["tag"]]
    if t["stage"]:
        meta["stage_directions"] = t["stage"]
    # Continuation lines keep their line breaks (numbered lists read as lists).
    return Turn(role=t["role"], text="\n".join(x for x in t["lines"] if x), meta=meta)
