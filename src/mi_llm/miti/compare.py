"""Two systems' MITI figures compared with their uncertainty: the pooled ratios (counts summed
over a system's sessions) and a bootstrap over sessions of their difference.

Sessions are resampled with replacement within each system, independently (the two
systems may have been tested on different dialogues, e.g. raw vs MI-rewritten corpora); the
interval is the percentile interval of the differences (undefined resamples left out).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from mi_llm.miti.scoring import SessionScores

REFLECTIONS = ("SR", "CR")


def _pct_cr(sessions: Sequence[SessionScores]) -> float | None:
    cr = sum(s.counts.get("CR", 0) for s in sessions)
    refl = sum(s.counts.get(c, 0) for s in sessions for c in REFLECTIONS)
    return cr / refl if refl else None


def _r_q(sessions: Sequence[SessionScores]) -> float | None:
    refl = sum(s.counts.get(c, 0) for s in sessions for c in REFLECTIONS)
    q = sum(s.counts.get("Q", 0) for s in sessions)
    return refl / q if q else None


def _mi_adherent(sessions: Sequence[SessionScores]) -> float | None:
    ad = sum(s.ratio.adherent for s in sessions)
    total = ad + sum(s.ratio.non_adherent for s in sessions)
    return ad / total if total else None


# The pooled figures an ablation compares: key -> (label, function of a system's sessions).
POOLED: dict[str, tuple[str, Callable[[Sequence[SessionScores]], float | None]]] = {
    "pct_cr": ("%CR", _pct_cr),
    "r_q": ("R:Q", _r_q),
    "mi_adherent_ratio": ("MI-adherent ratio", _mi_adherent),
}


def pooled_figures(sessions: Sequence[SessionScores]) -> dict[str, float | None]:
    return {key: fn(sessions) for key, (_, fn) in POOLED.items()}


def bootstrap_difference(
    a: Sequence[SessionScores],
    b: Sequence[SessionScores],
    key: str,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """`key` of b minus `key` of a, pooled, with a bootstrap percentile interval over sessions."""
    fn = POOLED[key][1]
    va, vb = fn(a), fn(b)
    diff = None if va is None or vb is None else vb - va
    out: dict[str, Any] = {"difference": diff, "low": None, "high": None, "resamples": 0}
    if diff is None or not a or not b:
        return out
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        ra = fn([a[rng.randrange(len(a))] for _ in a])
        rb = fn([b[rng.randrange(len(b))] for _ in b])
        if ra is not None and rb is not None:
            diffs.append(rb - ra)
    if diffs:
        diffs.sort()
        tail = (1 - level) / 2
        out.update(
            low=diffs[int(tail * (len(diffs) - 1))],
            high=diffs[int(round((1 - tail) * (len(diffs) - 1)))],
            resamples=len(diffs),
        )
    return out
