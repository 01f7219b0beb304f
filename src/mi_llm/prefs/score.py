"""Scoring sampled counselor replies with a MITI coder, and the guards against degenerate
replies that a coder alone would reward (a one-word "You feel stressed." repeated, a copy
of the client's words, another language, a reply cut at the token limit).

A reply's score is the mean worth of its utterances' codes (`ScoreConfig.weights`): so a
complex reflection beats a simple one, a reflection beats a question, and adding utterances
does not raise a score by itself. `choose_pair` picks the chosen and rejected replies of a
round from its scored candidates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mi_llm.build.strategy import split_tag, tagged
from mi_llm.corpus.language import CJK, detect_language
from mi_llm.miti.coders.base import Item
from mi_llm.miti.segment import split_utterances
from mi_llm.prefs.config import ScoreConfig
from mi_llm.prefs.pairs import ScoredReply

_WORD = re.compile(r"\w+", re.UNICODE)


def units(text: str, language: str) -> list[str]:
    """Words of an English reply; the CJK characters of a Chinese one (two count as one unit
    of length, about a word)."""
    if language == "zh":
        return CJK.findall(text)
    return [w.casefold() for w in _WORD.findall(text)]


def _length(text: str, language: str) -> float:
    n = len(units(text, language))
    return n / 2 if language == "zh" else n


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def degenerate_reason(
    text: str, client: str, language: str, cfg: ScoreConfig, cut_at_limit: bool = False
) -> str | None:
    """Why a reply must never be chosen, or None: truncation, language, length, repetition,
    copying the client."""
    if cut_at_limit:
        return "truncated"
    if detect_language(text, default=language) != language:
        return "language"
    length = _length(text, language)
    if length < cfg.min_units:
        return "too short"
    if length > cfg.max_units:
        return "too long"
    u = units(text, language)
    tri = _ngrams(u, 3)
    if len(tri) >= 6 and len(set(tri)) / len(tri) < cfg.min_distinct_3:
        return "repetition"
    quad = _ngrams(u, 4)
    if quad:
        client_quads = set(_ngrams(units(client, language), 4))
        if sum(q in client_quads for q in quad) / len(quad) > cfg.max_client_copy:
            return "copies the client"
    elif u and " ".join(u) in " ".join(units(client, language)):
        return "copies the client"
    return None


@dataclass
class Candidate:
    """A sampled reply to score: the round's client turn and language, and whether the
    sampler stopped it at the token limit."""

    text: str
    client: str
    language: str
    cut_at_limit: bool = False


def trim_to_whole_utterances(reply: str, language: str) -> str | None:
    """A reply cut at the token limit, up to the end of its last whole utterance (the cut one
    dropped); None when no utterance ended before the cut."""
    pieces = split_utterances(reply, language)
    if len(pieces) < 2:
        return None
    cut = reply.rfind(pieces[-1])
    return reply[:cut].rstrip() if cut > 0 else None


def score_candidates(coder: object, candidates: Sequence[Candidate], cfg: ScoreConfig) -> list[ScoredReply]:
    """Code every candidate's utterances in one batch (the client turn as context) and score them.
    A strategy tag a strategy-trained model writes first (`[CR] ...`) is neither coded nor
    guarded; the pair keeps the text as sampled, tag included, so the policy learns it too.
    A reply cut at the token limit is kept up to its last whole utterance (`trimmed`: a pair
    then teaches the model to end there), and is `truncated` only when nothing whole is left:
    a small model at a sampling temperature rarely ends within the limit."""
    texts: list[str] = []
    replies: list[str] = []
    trimmed: list[bool] = []
    for c in candidates:
        code, reply = split_tag(c.text)
        whole = trim_to_whole_utterances(reply, c.language) if c.cut_at_limit else None
        texts.append(tagged(code, whole) if whole else c.text)  # a trimmed reply keeps its opening tag
        replies.append(whole or reply)
        trimmed.append(whole is not None)
    # still cut: at the limit with no whole utterance to keep
    reasons = [
        degenerate_reason(r, c.client, c.language, cfg, c.cut_at_limit and not t)
        for r, c, t in zip(replies, candidates, trimmed)
    ]
    pieces = [split_utterances(r, c.language) for r, c in zip(replies, candidates)]
    items = [Item(u, c.client, c.language) for c, ps in zip(candidates, pieces) for u in ps]
    results = coder.code_items(items) if items else []  # type: ignore[attr-defined]
    out: list[ScoredReply] = []
    k = 0
    for text, ps, reason, was_trimmed in zip(texts, pieces, reasons, trimmed):
        codes = [r.code for r in results[k : k + len(ps)]]
        k += len(ps)
        score = sum(cfg.weights.get(code, 0.0) if code else 0.0 for code in codes) / len(codes) if codes else 0.0
        out.append(ScoredReply(text=text, score=round(score, 4), codes=codes, degenerate=reason, trimmed=was_trimmed))
    return out


def choose_pair(
    replies: Sequence[ScoredReply], min_margin: float, degenerate_rejected: bool = True
) -> tuple[ScoredReply, ScoredReply] | None:
    """(chosen, rejected) of one round, or None. Chosen: the best-scored sound reply; rejected:
    the worst-scored sound reply when it is at least `min_margin` below, else (when allowed) a
    degenerate reply. Ties go to the earlier sample, so the choice is deterministic."""
    seen: set[str] = set()
    sound: list[ScoredReply] = []
    bad: list[ScoredReply] = []
    for r in replies:
        if r.text in seen or not r.text.strip():
            continue
        seen.add(r.text)
        (bad if r.degenerate else sound).append(r)
    if not sound:
        return None
    chosen = max(sound, key=lambda r: r.score or 0.0)  # max keeps the first of equals
    worst = min(sound, key=lambda r: r.score or 0.0)
    if worst is not chosen and (chosen.score or 0.0) - (worst.score or 0.0) >= min_margin:
        return chosen, worst
    if degenerate_rejected and bad:
        return chosen, bad[0]
    return None
