"""Aggregation over sessions, pooled ratios and the side-by-side table."""

from __future__ import annotations

import pytest
from rich.console import Console

from mi_llm.errors import MiLlmError
from mi_llm.miti.aggregate import aggregate, comparison_table, describe, pooled
from mi_llm.miti.scoring import RATIO_DEFINITIONS, score_session
from tests.miti.helpers import coded

# %CR per session, by hand: [SR],[CR] -> 1/2 = 0.5;  [GI] -> undefined;  [CR] -> 1.0;  [SR] -> 0.0
SESSIONS = [
    coded([["SR"], ["CR"]], {"cct": 2, "sst": 3, "partnership": 4, "empathy": 4}),
    coded([["GI"]]),
    coded([["CR", "Q"]], {"cct": 4, "sst": 4, "partnership": 4, "empathy": 5}),
    coded([["SR", "Q"], ["Q"]], {"cct": 3, "sst": 3, "partnership": 2, "empathy": 3}),
]


def test_describe_ignores_missing_and_counts_them():
    d = describe([0.5, None, 1.0, 0.0])
    # sorted [0, 0.5, 1]: median 0.5; linear quartiles 0.25 and 0.75
    assert d == {
        "n": 3,
        "missing": 1,
        "mean": 0.5,
        "sd": 0.5,
        "median": 0.5,
        "q1": 0.25,
        "q3": 0.75,
        "iqr": 0.5,
        "min": 0.0,
        "max": 1.0,
    }
    empty = describe([None, None])
    assert empty["n"] == 0 and empty["missing"] == 2 and empty["mean"] is None and empty["median"] is None


def test_aggregate_by_hand():
    scores = [score_session(d) for d in SESSIONS]
    agg = aggregate(scores)
    assert agg["pct_cr"]["n"] == 3 and agg["pct_cr"]["missing"] == 1
    assert agg["pct_cr"]["mean"] == pytest.approx(0.5) and agg["pct_cr"]["median"] == 0.5
    assert (agg["pct_cr"]["q1"], agg["pct_cr"]["q3"]) == (0.25, 0.75)
    assert agg["pct_cr"]["level"] == "good"
    # R:Q: s1 no question (undefined), s2 undefined, s3 1/1 = 1, s4 1/2 = 0.5 -> mean 0.75
    assert agg["r_q"]["n"] == 2 and agg["r_q"]["missing"] == 2 and agg["r_q"]["mean"] == pytest.approx(0.75)
    assert agg["r_q"]["level"] == "below fair"
    # technical: 2.5, (none), 4, 3 -> mean 3.1667, median 3
    assert agg["technical"]["missing"] == 1 and agg["technical"]["median"] == 3.0
    assert agg["technical"]["mean"] == pytest.approx(19 / 6)
    # per-code counts: Q in 0, 0, 1, 2 sessions' volleys -> mean 0.75
    assert agg["Q"]["mean"] == 0.75 and agg["Q"]["missing"] == 0
    assert agg["mi_adherent_ratio"]["n"] == 0 and agg["mi_adherent_ratio"]["mean"] is None


def test_pooled_ratios_by_hand():
    p = pooled([score_session(d) for d in SESSIONS])
    # totals: SR 2, CR 2, Q 3 -> %CR 2/4, R:Q 4/3; no MIA or MINA at all -> ratio undefined
    assert p["pct_cr"] == 0.5 and p["r_q"] == pytest.approx(4 / 3) and p["mi_adherent_ratio"] is None
    assert p["sessions"] == 4 and p["counts"]["Q"] == 3


def test_mixed_definitions_refused():
    a = score_session(SESSIONS[0])
    b = score_session(SESSIONS[0], RATIO_DEFINITIONS["pwp-adherent"])
    with pytest.raises(MiLlmError, match="different MI-adherent ratio definitions"):
        aggregate([a, b])


def test_comparison_table_dict_and_rich():
    model = [score_session(coded([["GI", "Q"], ["SR"]], {"cct": 2, "sst": 2, "partnership": 3, "empathy": 3}))]
    reference = [
        score_session(coded([["CR", "Q"], ["CR", "AF"]], {"cct": 4, "sst": 4, "partnership": 4, "empathy": 5}))
    ]
    table = comparison_table({"model": model, "reference": reference})
    d = table.to_dict()
    assert d["systems"] == ["model", "reference"] and d["sessions"] == {"model": 1, "reference": 1}
    rows = {r["key"]: r for r in d["rows"]}
    assert rows["pct_cr"]["cells"]["model"]["mean"] == 0.0 and rows["pct_cr"]["cells"]["model"]["level"] == "below fair"
    assert (
        rows["pct_cr"]["cells"]["reference"]["mean"] == 1.0 and rows["pct_cr"]["cells"]["reference"]["level"] == "good"
    )
    assert rows["pct_cr"]["paper"]["real counselors"] == {"low": 0.37, "high": 0.37, "level": "below fair"}
    assert rows["mi_adherent_ratio"]["paper"]["fine-tuned LLMs"]["low"] == 0.67
    assert rows["mi_adherent_ratio"]["cells"]["model"]["mean"] is None  # no MIA, no MINA
    assert rows["relational"]["fair"] == 3.5 and rows["relational"]["good"] == 4.0
    assert rows["technical"]["cells"]["model"]["level"] == "below fair"
    console = Console(width=200, record=True)
    console.print(table.to_rich())
    text = console.export_text()
    assert "real 0.37" in text and "LLMs 0.67-0.82" in text and "reference (n=1)" in text
    assert "n/a" in text
