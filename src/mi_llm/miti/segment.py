"""Split a counselor turn into MITI utterances (one complete thought each), zh and en.

MITI codes "utterances": complete thoughts inside a volley. A sentence is the practical
proxy used here: the bundled demo corpus segments counselor turns at sentence ends too
(see `tests/miti/test_segment.py` for the agreement with its gold boundaries). The one
splitter of mi-llm: the coders segment with it, and the annotation tool pre-splits with it
(a first guess a human coder corrects).

The pieces are exact substrings of the turn, stripped, in order: joined, they give the
turn's text back up to whitespace (which `Turn.codes` requires).
"""

from __future__ import annotations

import re

from mi_llm.corpus.language import detect_language

# English: a sentence ends at . ! ? (or an ellipsis), maybe followed by closing quotes or
# brackets, then whitespace and something that can start a sentence.
_EN_END = re.compile(
    r"""(?:[.!?]+|\u2026)["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u024f\u4e00-\u9fff])"""
)
# Words whose trailing period does not end a sentence.
_EN_ABBREV = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "eg",
    "ie",
    "approx",
    "fig",
    "a.m",
    "p.m",
    "u.s",
    "cf",
    "mt",
    "ave",
}
# Chinese: full-width or ASCII sentence enders (and ellipses), plus closing quotes/brackets.
_ZH_END = re.compile(r"""(?:[。！？!?]+|……|…|\.{3,})[”’」』）)\]"']*""")


def _en_cuts(text: str) -> list[int]:
    cuts = []
    for m in _EN_END.finditer(text):
        end = m.end()
        if text[m.start()] == ".":
            # the word before the period: an abbreviation or a single initial does not end it
            word = re.search(r"([A-Za-z.]+)$", text[: m.start()])
            w = word.group(1).lower() if word else ""
            if (
                w in _EN_ABBREV
                or (w == "no" and re.match(r"\s+\d", text[end:]))
                or (len(w) == 1 and w.isalpha() and text[m.start() - 1].isupper())
            ):
                continue
        cuts.append(end)
    return cuts


def _zh_cuts(text: str) -> list[int]:
    # English sentences inside a Chinese turn (mixed text) split on the English rule too.
    cuts = {m.end() for m in _ZH_END.finditer(text)} | set(_en_cuts(text))
    return sorted(c for c in cuts if 0 < c < len(text))


def split_utterances(text: str, language: str | None = None) -> list[str]:
    """The utterances of a counselor turn, in order; never empty for non-blank text."""
    text = text.strip()
    if not text:
        return []
    language = language or detect_language(text)
    cuts = _zh_cuts(text) if language == "zh" else _en_cuts(text)
    spans: list[tuple[int, int]] = []
    start = 0
    for c in [*cuts, len(text)]:
        piece = text[start:c]
        if piece.strip():
            a = start + len(piece) - len(piece.lstrip())
            b = c - (len(piece) - len(piece.rstrip()))
            # A piece with no letters or digits (a stray quote or dash) joins the one before.
            if spans and not any(ch.isalnum() for ch in piece):
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
        start = c
    return [text[a:b] for a, b in spans]
