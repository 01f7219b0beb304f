"""The one language guess of mi-llm (zh or en), for every stage that needs one.

A text is Chinese when it has CJK characters and they are at least a fifth as many as its
Latin letters: a CJK character carries about a word and an English word has about five
letters, so the threshold is "at least as many Chinese words as English ones".
`LATIN_PER_CJK` (5) is that ratio (the importers' threshold, so imported dialogues keep
their language). Digits, punctuation, emoji and other scripts count
for neither side. The importers, the metrics (sacreBLEU's tokenizer), the MITI coders and
the chat server's safety layer all call `detect_language`, so one text is the same
language to every stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar, overload

# CJK Unified Ideographs, Extension A and the compatibility ideographs.
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
LATIN_PER_CJK = 5  # zh when CJK characters * LATIN_PER_CJK >= Latin letters
_ENOUGH = 2000  # letters: counting stops once this many are seen (long dialogues)

D = TypeVar("D")


@overload
def detect_language(text: str | Iterable[str]) -> str: ...
@overload
def detect_language(text: str | Iterable[str], default: D) -> str | D: ...
def detect_language(text: str | Iterable[str], default: object = "en") -> object:
    """'zh' when CJK characters are at least 1/`LATIN_PER_CJK` of the Latin letters of
    `text` (a string, or strings read in order until 2000 letters are seen), 'en' when
    it has Latin letters otherwise, `default` when it has neither."""
    texts = [text] if isinstance(text, str) else text
    cjk = latin = 0
    for t in texts:
        cjk += len(CJK.findall(t))
        latin += len(_LATIN.findall(t))
        if cjk + latin > _ENOUGH:
            break
    if cjk and cjk * LATIN_PER_CJK >= latin:
        return "zh"
    if latin:
        return "en"
    return default
