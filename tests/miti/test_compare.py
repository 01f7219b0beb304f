"""Pooled MITI figures and the bootstrap interval of their difference between two systems."""

from __future__ import annotations

import pytest

from mi_llm.corpus.schema import Dialogue
from mi_llm.miti.compare import bootstrap_difference, pooled_figures
from mi_llm.miti.scoring import score_session


def session(i: int, codes: list[str]) -> object:
    turns: list[dict] = []
    for k, c in enumerate(codes):
        turns += [
            {"role": "client", "text": f"c{k}"},
            {"role": "counselor", "text": f"r{k}.", "codes": [{"text": f"r{k}.", "code": c}]},
        ]
    return score_session(Dialogue.model_validate({"id": f"s{i}", "source": "t", "language": "en", "turns": turns}))


def test_pooled_figures_sum_counts_over_sessions() -> None:
    got = pooled_figures([session(0, ["Q", "CR", "SR"]), session(1, ["Q", "CR", "AF", "Persuade"])])
    assert got["pct_cr"] == pytest.approx(2 / 3) and got["r_q"] == pytest.approx(3 / 2)
    assert got["mi_adherent_ratio"] == pytest.approx(1 / 2)
    assert pooled_figures([session(0, ["GI"])]) == {"pct_cr": None, "r_q": None, "mi_adherent_ratio": None}


def test_bootstrap_interval_covers_the_difference() -> None:
    a = [session(i, ["Q", "SR", "Q"] if i % 2 else ["Q", "CR"]) for i in range(10)]
    b = [session(i, ["Q", "CR", "CR"] if i % 2 else ["Q", "CR", "SR"]) for i in range(10)]
    d = bootstrap_difference(a, b, "r_q", resamples=500, seed=1)
    assert d["difference"] == pytest.approx(20 / 10 - 10 / 15)
    assert d["low"] <= d["difference"] <= d["high"] and d["low"] < d["high"] and d["resamples"] == 500
    assert bootstrap_difference(a, b, "r_q", resamples=500, seed=1) == d  # seeded
    assert bootstrap_difference(a, [session(0, ["GI"])], "r_q")["difference"] is None
