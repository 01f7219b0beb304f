"""Does the harness separate a good counselor from a poor one? Outcomes of several
counselors on the same planned sessions (same personas, same seeds), compared with
bootstrap confidence intervals.

Per session (from outcomes.json): success (a plan in preparation), drop-out, stage
progress (final minus start stage, -2..2), final receptivity (1-5) and the client's
change-talk share. The difference good - poor is bootstrapped over sessions, paired by
session id when both counselors ran the same sessions (they differ only in the counselor).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

STAGE_RANK = {"precontemplation": 0, "contemplation": 1, "preparation": 2}


def _receptivity(o: dict[str, Any]) -> float | None:
    r = o.get("receptivity") or []
    return float(r[-1]) if r else None


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "success": lambda o: float(bool(o["success"])),
    "dropout": lambda o: float(o.get("end_reason") == "dropout"),
    "stage_progress": lambda o: float(STAGE_RANK[o["final_stage"]] - STAGE_RANK[o["start_stage"]]),
    "final_receptivity": _receptivity,
    "change_share": lambda o: o.get("change_share"),
}


def bootstrap_ci(
    values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float] | None:
    """(mean, low, high): percentile bootstrap of the mean; None with no values."""
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    lo = means[int(tail * (resamples - 1))]
    hi = means[int((1 - tail) * (resamples - 1))]
    return round(statistics.fmean(values), 4), round(lo, 4), round(hi, 4)


def _values(outcomes: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    out = {}
    for o in outcomes:
        v = METRICS[metric](o)
        if v is not None:
            out[o["id"]] = float(v)
    return out


def compare(
    good: Sequence[dict[str, Any]], poor: Sequence[dict[str, Any]], resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per metric: each side's mean with its 95% CI and the difference good - poor with its CI
    (paired by session id when both ran the same sessions, else unpaired); `separates` when the
    difference's CI excludes 0 in the good side's favour (dropout: lower is better)."""
    rows: dict[str, dict[str, Any]] = {}
    # the same planned sessions: differences per session (a ratio undefined on either side left out)
    paired = {o["id"] for o in good} == {o["id"] for o in poor}
    for metric in METRICS:
        a, b = _values(good, metric), _values(poor, metric)
        if paired:
            diff = bootstrap_ci([a[k] - b[k] for k in sorted(set(a) & set(b))], resamples, seed=seed)
        else:
            diff = _unpaired_diff(list(a.values()), list(b.values()), resamples, seed)
        sign = -1 if metric == "dropout" else 1
        rows[metric] = {
            "good": bootstrap_ci(list(a.values()), resamples, seed=seed),
            "poor": bootstrap_ci(list(b.values()), resamples, seed=seed),
            "diff": diff,
            "paired": paired,
            "separates": diff is not None and (diff[1] > 0 if sign > 0 else diff[2] < 0),
        }
    return rows


def _unpaired_diff(
    a: Sequence[float], b: Sequence[float], resamples: int, seed: int
) -> tuple[float, float, float] | None:
    if not a or not b:
        return None
    rng = random.Random(seed)
    diffs = sorted(
        statistics.fmean(rng.choices(a, k=len(a))) - statistics.fmean(rng.choices(b, k=len(b)))
        for _ in range(resamples)
    )
    return (
        round(statistics.fmean(a) - statistics.fmean(b), 4),
        round(diffs[int(0.025 * (resamples - 1))], 4),
        round(diffs[int(0.975 * (resamples - 1))], 4),
    )
