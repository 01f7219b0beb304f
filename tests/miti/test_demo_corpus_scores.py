"""Score the bundled demo corpus: MI dialogues must look like MI, the raw ones must not.

This checks the corpus's codes as much as the scoring."""

from __future__ import annotations

import pytest

from mi_llm.miti.aggregate import aggregate, pooled
from mi_llm.miti.scoring import score_session
from mi_llm.miti.session import CodedSession
from mi_llm.resources import demo_dialogues


@pytest.mark.parametrize("language", ["zh", "en"])
def test_demo_mi_vs_raw(language):
    mi = [score_session(CodedSession.from_dialogue(d)) for d in demo_dialogues(language, "mi")]
    raw = [score_session(CodedSession.from_dialogue(d)) for d in demo_dialogues(language, "raw")]
    assert len(mi) >= 20 and len(raw) >= 5
    for s in mi:
        assert s.summary.r_q is not None and s.summary.r_q > 1, s.id
        assert s.summary.pct_cr is not None and s.summary.pct_cr >= 0.5, s.id
        assert s.globals is not None and s.summary.relational >= 3.5, s.id
    agg_mi, agg_raw = aggregate(mi), aggregate(raw)
    assert agg_mi["r_q"]["mean"] > 1 and agg_mi["pct_cr"]["mean"] > 0.5
    assert agg_raw["r_q"]["mean"] < 0.5 and pooled(raw)["pct_cr"] < 0.2
    assert agg_mi["mi_adherent_ratio"]["mean"] > agg_raw["mi_adherent_ratio"]["mean"]
    assert agg_mi["mina"]["mean"] < agg_raw["mina"]["mean"]
    assert agg_raw["relational"]["max"] < agg_mi["relational"]["min"]
    # The corpus covers the rarer codes the coders need (EA and PwP in MI, Confront in raw).
    assert pooled(mi)["counts"]["EA"] > 0 and pooled(mi)["counts"]["PwP"] > 0
    assert pooled(raw)["counts"]["Confront"] > 0
