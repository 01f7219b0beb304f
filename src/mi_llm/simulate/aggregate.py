"""Per-counselor aggregates of session outcomes, with 95% confidence intervals over sessions.

The interval is a percentile bootstrap: sessions are resampled with replacement
(BOOTSTRAP_RESAMPLES times, a fixed seed, so the same sessions give the same interval) and
the 2.5th and 97.5th percentiles of the resampled means are the bounds. It makes no
normality assumption (ratios such as R:Q are skewed) and covers the success rate as the mean
of 0/1. With few sessions it is narrow and optimistic: `n` is reported beside it. A session
whose ratio is undefined (zero denominator) is left out of that score and counted in
`missing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
CI_METHOD = (
    f"percentile bootstrap over sessions ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}), "
    f"{CONFIDENCE:.0%} interval"
)

# (key in a session's outcome, label), in table order. `success` is 0/1 per session.
OUTCOME_KEYS: tuple[tuple[str, str], ...] = (
    ("success", "success rate (plan in preparation)"),
    ("r_q", "R:Q"),
    ("pct_cr", "%CR"),
    ("mi_adherent_ratio", "MI-adherent ratio"),
    ("change_share", "client change talk share"),
    ("rounds", "rounds used"),
    ("moves_back", "stage moves back"),
)


def mean_ci(values: Sequence[float | None], seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """{n, missing, mean, ci_low, ci_high} of the defined values; the bounds None when n < 2."""
    vals = np.array([float(v) for v in values if v is not None], dtype=float)
    out: dict[str, Any] = {"n": int(vals.size), "missing": len(values) - int(vals.size)}
    if vals.size == 0:
        return out | {"mean": None, "ci_low": None, "ci_high": None}
    out["mean"] = round(float(vals.mean()), 4)
    if vals.size < 2:
        return out | {"ci_low": None, "ci_high": None}
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(BOOTSTRAP_RESAMPLES, vals.size))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return out | {"ci_low": round(float(low), 4), "ci_high": round(float(high), 4)}


def session_value(outcome: Mapping[str, Any], key: str) -> float | None:
    v = outcome.get(key)
    if isinstance(v, bool):
        return float(v)
    return None if v is None else float(v)


def aggregate_outcomes(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{key: mean and interval over sessions} for every OUTCOME_KEYS key."""
    return {key: mean_ci([session_value(o, key) for o in outcomes]) for key, _ in OUTCOME_KEYS}
