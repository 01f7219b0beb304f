"""Agreement: perfect agreement, a hand-computed disagreement, ICC forms, alignment errors."""

from __future__ import annotations

import pytest

from mi_llm.errors import InputError, MiLlmError
from mi_llm.miti.reliability import CoderFile, agreement, icc
from tests.miti.helpers import coded

# Ten utterances in five volleys of two. By hand (null = "none"):
#   A: Q  Q  Q  Q  SR SR CR CR GI none
#   B: Q  Q  Q  SR SR SR CR GI GI none
# observed agreement po = 8/10 = 0.8
# marginals A: Q4 SR2 CR2 GI1 none1;  B: Q3 SR3 CR1 GI2 none1
# pe = (4*3 + 2*3 + 2*1 + 1*2 + 1*1) / 100 = 0.23
# Cohen's kappa = (0.8 - 0.23) / (1 - 0.23) = 0.57 / 0.77 = 0.740260
# Krippendorff's alpha (nominal): values n = 20, Q7 SR5 CR3 GI3 none2;
#   D_o = 4 / 20 = 0.2 (two disagreeing units, each a pair both ways)
#   D_e = (20^2 - (49+25+9+9+4)) / (20*19) = 304 / 380 = 0.8;  alpha = 1 - 0.2/0.8 = 0.75
# Q vs the rest: both yes 3, only A 1, both no 6: po 0.9, pe 0.4*0.3 + 0.6*0.7 = 0.54,
#   kappa = 0.36 / 0.46 = 0.782609
A = ["Q", "Q", "Q", "Q", "SR", "SR", "CR", "CR", "GI", None]
B = ["Q", "Q", "Q", "SR", "SR", "SR", "CR", "GI", "GI", None]


def _volleys(codes):
    return [codes[i : i + 2] for i in range(0, len(codes), 2)]


def _coder(name, dialogues):
    return CoderFile(
        name=name,
        path=f"{name}.jsonl",
        sessions={d.id: d for d in dialogues},
        lines={d.id: i + 1 for i, d in enumerate(dialogues)},
    )


def test_perfect_agreement():
    d = coded(_volleys(A), {"cct": 3, "sst": 3, "partnership": 4, "empathy": 4}, id="x")
    r = agreement([_coder("a", [d]), _coder("b", [d])])
    ov = r["utterances"]["overall"]
    assert ov["units"] == 10 and ov["percent_agreement"] == 1.0
    assert ov["cohen_kappa"] == pytest.approx(1.0) and ov["krippendorff_alpha"] == pytest.approx(1.0)
    assert r["utterances"]["per_code"]["Q"]["cohen_kappa"] == pytest.approx(1.0)
    # a code nobody used: kappa and alpha undefined, not 0 or 1
    assert r["utterances"]["per_code"]["EA"]["cohen_kappa"] is None
    assert r["utterances"]["per_code"]["EA"]["krippendorff_alpha"] is None
    # one session only: ICC undefined with a reason
    assert r["session_scores"]["scores"]["cct"]["icc2_1"] is None
    assert "at least 3 sessions" in r["session_scores"]["scores"]["cct"]["note"]


def test_constructed_disagreement_by_hand():
    a = coded(_volleys(A), id="x")
    b = coded(_volleys(B), id="x", texts=[[u.text for u in t.codes] for t in a.turns if t.codes])
    r = agreement([_coder("a", [a]), _coder("b", [b])])
    ov = r["utterances"]["overall"]
    assert ov["percent_agreement"] == pytest.approx(0.8)
    assert ov["cohen_kappa"] == pytest.approx(0.57 / 0.77)
    assert ov["krippendorff_alpha"] == pytest.approx(0.75)
    q = r["utterances"]["per_code"]["Q"]
    assert q["count"] == {"a": 4, "b": 3}
    assert q["cohen_kappa"] == pytest.approx(0.36 / 0.46)
    cm = r["utterances"]["confusion"]["a vs b"]
    labels = cm["labels"]
    m = {(labels[i], labels[j]): v for i, row in enumerate(cm["matrix"]) for j, v in enumerate(row) if v}
    assert m == {
        ("Q", "Q"): 3,
        ("Q", "SR"): 1,
        ("SR", "SR"): 2,
        ("CR", "CR"): 1,
        ("CR", "GI"): 1,
        ("GI", "GI"): 1,
        ("none", "none"): 1,
    }


def test_icc_forms_by_hand():
    # B = A + 1 on three sessions: two-way ANOVA gives MSB = 2, MSJ = 1.5, MSE = 0, so
    # ICC(3,1) consistency = (2 - 0) / (2 + 0) = 1 and
    # ICC(2,1) absolute agreement = (2 - 0) / (2 + 0 + 2 * (1.5 - 0) / 3) = 2 / 3.
    r = icc({"s1": [1, 2], "s2": [2, 3], "s3": [3, 4]})
    assert r["icc3_1"] == pytest.approx(1.0)
    assert r["icc2_1"] == pytest.approx(2 / 3, abs=1e-6)
    assert r["n"] == 3 and "very uncertain" in r["note"]
    same = icc({"s1": [3, 3], "s2": [3, 3], "s3": [3, 3]})  # 3 sessions: 2 x 2 ratings are too few anyway
    assert same["icc2_1"] is None and "all values equal" in same["note"]


def test_icc_too_few_ratings_is_undefined_with_what_is_needed():
    # pingouin's ANOVA needs 5 ratings: 2 sessions x 2 coders was an AssertionError
    two = icc({"s1": [1, 2], "s2": [2, 4]})
    assert two["icc2_1"] is None and two["icc3_1"] is None and two["icc2_1_ci95"] is None
    assert two["note"] == "needs at least 3 sessions rated by every coder (2 here)"
    # 2 sessions x 3 coders are 6 ratings: defined (and very uncertain)
    three = icc({"s1": [1, 2, 3], "s2": [2, 4, 3]})
    assert three["icc3_1"] == pytest.approx(0.4) and "very uncertain" in three["note"]
    assert "at least 2 sessions" in icc({"s1": [1, 2, 3, 4, 5]})["note"]
    assert "at least 3 sessions" in icc({}, coders=2)["note"] and "at least 2 sessions" in icc({}, coders=3)["note"]


def test_score_defined_in_two_of_four_sessions():
    # R:Q is undefined without questions: only s3 and s4 have one, so its ICC has 2 x 2
    # ratings (left out, with a note) while the globals over all 4 sessions are computed
    g = lambda c: {"cct": c, "sst": 3, "partnership": 3, "empathy": 3}  # noqa: E731
    volleys = {1: [["SR"]], 2: [["CR"]], 3: [["Q", "SR"]], 4: [["Q", "CR", "SR"]]}
    a = [coded(volleys[c], g(c), id=f"s{c}") for c in (1, 2, 3, 4)]
    b = [coded(volleys[c], g(min(c + 1, 5)), id=f"s{c}") for c in (1, 2, 3, 4)]
    scores = agreement([_coder("a", a), _coder("b", b)])["session_scores"]["scores"]
    assert scores["r_q"]["n"] == 2 and scores["r_q"]["left_out"] == 2 and scores["r_q"]["icc2_1"] is None
    assert "at least 3 sessions" in scores["r_q"]["note"]
    assert scores["cct"]["n"] == 4 and scores["cct"]["icc3_1"] is not None


def test_icc_on_globals_across_sessions():
    g = lambda c: {"cct": c, "sst": 3, "partnership": 3, "empathy": 3}  # noqa: E731
    a = [coded([["Q"]], g(c), id=f"s{c}") for c in (1, 2, 3)]
    b = [coded([["Q"]], g(c + 1), id=f"s{c}") for c in (1, 2, 3)]
    r = agreement([_coder("a", a), _coder("b", b)])
    cct = r["session_scores"]["scores"]["cct"]
    assert cct["n"] == 3 and cct["icc2_1"] == pytest.approx(2 / 3, abs=1e-6) and cct["icc3_1"] == pytest.approx(1.0)
    tech = r["session_scores"]["scores"]["technical"]  # (c+3)/2 vs (c+4)/2: same shape, halved
    assert tech["icc3_1"] == pytest.approx(1.0) and tech["icc2_1"] == pytest.approx(2 / 3, abs=1e-6)
    assert (
        "ICC(2,1)" in r["session_scores"]["forms"]["icc2_1"]
        and "absolute agreement" in r["session_scores"]["forms"]["icc2_1"]
    )


def test_segmentation_mismatch_strict_error_and_text_alignment():
    a = coded([["Q", "SR"], ["CR"]], id="x", texts=[["What now?", "You are unsure."], ["It matters."]])
    b = coded([["Q"], ["CR"]], id="x", texts=[["What now? You are unsure."], ["It matters."]])
    with pytest.raises(MiLlmError, match="split 1 counselor turn.*--align text"):
        agreement([_coder("a", [a]), _coder("b", [b])])
    r = agreement([_coder("a", [a]), _coder("b", [b])], mode="text")
    assert r["alignment"]["units"] == 1 and r["alignment"]["unmatched"] == {"a": 2, "b": 1}


def test_sessions_matched_by_id_and_different_dialogues_refused():
    a1, a2 = coded([["Q"]], id="one"), coded([["Q"]], id="two")
    b1 = coded([["SR"]], id="one")
    r = agreement([_coder("a", [a1, a2]), _coder("b", [b1])])
    assert r["sessions"] == {"matched": 1, "only_in": {"a": ["two"], "b": []}}
    other = coded([["Q"]], id="one", texts=[["Something else entirely."]])
    with pytest.raises(InputError, match="differs in its turns"):
        agreement([_coder("a", [a1]), _coder("b", [other])])
    with pytest.raises(MiLlmError, match="share no session"):
        agreement([_coder("a", [a2]), _coder("b", [b1])])


def test_three_coders_lights_kappa():
    a = coded(_volleys(A), id="x")
    texts = [[u.text for u in t.codes] for t in a.turns if t.codes]
    b = coded(_volleys(B), id="x", texts=texts)
    r = agreement([_coder("a", [a]), _coder("b", [b]), _coder("c", [a])])
    pairs = r["utterances"]["overall"]["cohen_kappa_pairs"]
    assert pairs["a vs c"] == pytest.approx(1.0) and pairs["a vs b"] == pytest.approx(0.57 / 0.77)
    assert r["utterances"]["overall"]["cohen_kappa"] == pytest.approx((1 + 2 * 0.57 / 0.77) / 3)
    assert len(r["utterances"]["confusion"]) == 3
