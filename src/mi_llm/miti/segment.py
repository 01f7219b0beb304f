"""Pre-splitting counselor turns into utterances at sentence punctuation (zh and en).

MITI codes "complete thoughts"; a sentence is the usual first guess, and a coder (human
or automatic) corrects it. The pieces always add up to the turn's text, whitespace aside,
so they validate as `Turn.codes`.
"""

from __future__ import annotations

import re

# Chinese sentence ends (full- and half-width), with closing quotes/brackets kept on the left.
_ZH_END = re.compile(r"[。！？!?…]+[”’」』）)\"']*")
# English: . ! ? (or an ellipsis) plus closing quotes/brackets, followed by whitespace.
_EN_END = re.compile(r"(?:\.{3}|…|[.!?])+[\"'”’)\]]*(?=\s)")
# Words whose final period does not end a sentence.
_LATIN_TAIL = re.compile(r"[A-Za-z.]+$")
_EN_NOT_AFTER = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "approx."}


def split_utterances(text: str, language: str) -> list[str]:
    """Split a turn into sentence-like utterances; never returns an empty list for non-blank text."""
    text = text.strip()
    if not text:
        return []
    cuts = _cuts_zh(text) if language == "zh" else _cuts_en(text)
    pieces, start = [], 0
    for cut in cuts + [len(text)]:
        piece = text[start:cut].strip()
        if piece:
            pieces.append(piece)
        start = cut
    return pieces


def _cuts_zh(text: str) -> list[int]:
    # Latin sentences inside Chinese text (mixed turns) split on the English rule too.
    cuts = {m.end() for m in _ZH_END.finditer(text)} | set(_cuts_en(text))
    return sorted(c for c in cuts if 0 < c < len(text))


def _cuts_en(text: str) -> list[int]:
    cuts = []
    for m in _EN_END.finditer(text):
        tail = _LATIN_TAIL.search(text[: m.end()].rstrip("\"'”’)]"))
        word = tail.group(0).lower() if tail else ""
        if word in _EN_NOT_AFTER:
            continue
        # "3 a.m. one": a lower-case word next means the sentence goes on.
        nxt = text[m.end():].lstrip()[:1]
        if nxt.islower():
            continue
        cuts.append(m.end())
    return cuts
