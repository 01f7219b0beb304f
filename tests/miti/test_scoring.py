"""Counting rules and every summary score on sessions computed by hand."""

from __future__ import annotations

import json

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.miti.codebook import CODES, level
from mi_llm.miti.scoring import RATIO_DEFINITIONS, RatioDefinition, score_session
from mi_llm.miti.session import CodedSession, volley_codes
from tests.miti.helpers import coded

# Session A, by hand (one list per volley = counselor turn):
#   1 [Q, Q]                      -> Q            (a code counts once per volley)
#   2 [SR, CR, SR]                -> CR           (one reflection per volley; complex wins)
#   3 [SR, SR]                    -> SR
#   4 [AF, Q]                     -> AF, Q
#   5 [Persuade, Persuade, PwP]   -> Persuade, PwP
#   6 [null]                      -> nothing
#   7 [EA, Seek, GI, Confront]    -> EA, Seek, GI, Confront
#   8 [CR]                        -> CR
# Counts: Q 2, SR 1, CR 2, AF 1, Persuade 1, PwP 1, EA 1, Seek 1, GI 1, Confront 1.
# Globals CCT 4, SST 3, Partnership 5, Empathy 2.
#   technical  = (4 + 3) / 2 = 3.5            (fair: 3 <= 3.5 < 4)
#   relational = (5 + 2) / 2 = 3.5            (fair: 3.5 <= 3.5 < 4)
#   %CR = 2 / (1 + 2) = 0.6667                (good: >= 0.50)
#   R:Q = (1 + 2) / 2 = 1.5                   (fair: 1 <= 1.5 < 2)
#   MIA = Seek + AF + EA = 3;  MINA = Persuade + Confront = 2
#   MI-adherent ratio = 3 / (3 + 2) = 0.6;  counting PwP as adherent: 4 / (4 + 2) = 0.6667
SESSION_A = [
    ["Q", "Q"],
    ["SR", "CR", "SR"],
    ["SR", "SR"],
    ["AF", "Q"],
    ["Persuade", "Persuade", "PwP"],
    [None],
    ["EA", "Seek", "GI", "Confront"],
    ["CR"],
]
GLOBALS_A = {"cct": 4, "sst": 3, "partnership": 5, "empathy": 2}


def test_volley_rules():
    assert volley_codes(["Q", "Q", "Q"]) == {"Q"}
    assert volley_codes(["SR", "CR"]) == {"CR"}
    assert volley_codes(["SR", "SR"]) == {"SR"}
    assert volley_codes(["CR", "CR", "SR", "Q"]) == {"CR", "Q"}
    assert volley_codes([None, None]) == frozenset()


def test_session_a_counts_and_scores():
    s = score_session(coded(SESSION_A, GLOBALS_A))
    assert s.counts == {
        "GI": 1,
        "Persuade": 1,
        "PwP": 1,
        "Q": 2,
        "SR": 1,
        "CR": 2,
        "AF": 1,
        "Seek": 1,
        "EA": 1,
        "Confront": 1,
    }
    # before the volley rules: every coded utterance
    assert s.utterance_counts == {
        "GI": 1,
        "Persuade": 2,
        "PwP": 1,
        "Q": 3,
        "SR": 4,
        "CR": 2,
        "AF": 1,
        "Seek": 1,
        "EA": 1,
        "Confront": 1,
    }
    assert (s.n_volleys, s.n_utterances, s.n_uncoded_utterances) == (8, 18, 1)
    assert s.summary.technical == 3.5
    assert s.summary.relational == 3.5
    assert s.summary.pct_cr == pytest.approx(2 / 3)
    assert s.summary.r_q == 1.5
    assert (s.summary.mia, s.summary.mina) == (3, 2)
    assert s.summary.mi_adherent_ratio == pytest.approx(0.6)
    assert (s.ratio.adherent, s.ratio.non_adherent) == (3, 2)
    assert s.levels == {"relational": "fair", "technical": "fair", "pct_cr": "good", "r_q": "fair"}


def test_ratio_definition_pwp_adherent_and_custom():
    d = coded(SESSION_A, GLOBALS_A)
    s = score_session(d, RATIO_DEFINITIONS["pwp-adherent"])
    assert s.summary.mi_adherent_ratio == pytest.approx(4 / 6)
    assert (s.ratio.adherent, s.ratio.non_adherent) == (4, 2)
    # MIA and MINA themselves are the manual's totals whatever the ratio counts
    assert (s.summary.mia, s.summary.mina) == (3, 2)
    custom = RatioDefinition.parse("adherent=AF+EA; non-adherent=Confront")
    s = score_session(d, custom)
    assert s.summary.mi_adherent_ratio == pytest.approx(2 / 3)
    assert s.ratio.formula == "(AF + EA) / (AF + EA + Confront)"


@pytest.mark.parametrize(
    "spec", ["nonsense", "adherent=AF,XX", "adherent=AF;non-adherent=AF", "adherent=;non-adherent=Persuade"]
)
def test_bad_ratio_definitions(spec):
    with pytest.raises(MiLlmError):
        RatioDefinition.parse(spec)


def test_undefined_ratios_are_none_never_zero_or_inf():
    # No reflections and no question: %CR and R:Q undefined; MIA + MINA = 0: ratio undefined; no globals.
    s = score_session(coded([["GI"], [None]]))
    assert s.summary.pct_cr is None and s.summary.r_q is None and s.summary.mi_adherent_ratio is None
    assert s.summary.technical is None and s.summary.relational is None and s.globals is None
    assert s.levels == {"relational": None, "technical": None, "pct_cr": None, "r_q": None}
    dumped = json.loads(json.dumps(s.report_dict()))
    assert dumped["summary"]["r_q"] is None and dumped["summary"]["mi_adherent_ratio"] is None
    # Reflections but no question: R:Q undefined (not infinity); %CR defined.
    s = score_session(coded([["SR"], ["SR", "Persuade"]]))
    assert s.summary.r_q is None and s.summary.pct_cr == 0.0
    assert s.summary.mi_adherent_ratio == 0.0  # 0 / (0 + 1) is defined


def test_good_and_below_fair_levels():
    # %CR 1.0, R:Q 2/1 = 2.0: both exactly at "good"; technical (5+5)/2 = 5; relational (1+2)/2 = 1.5.
    s = score_session(coded([["CR", "Q"], ["CR"]], {"cct": 5, "sst": 5, "partnership": 1, "empathy": 2}))
    assert s.summary.r_q == 2.0 and s.summary.pct_cr == 1.0
    assert s.levels == {"relational": "below fair", "technical": "good", "pct_cr": "good", "r_q": "good"}
    assert level("pct_cr", 0.39) == "below fair" and level("pct_cr", 0.40) == "fair"
    assert level("mia", 3) is None


def test_precedence_is_at_coding_time_one_code_per_utterance():
    # An utterance that is both an affirmation and a complex reflection is coded AF (one code):
    # the session model never sees two codes on one utterance.
    s = score_session(coded([["AF"]]))
    assert s.counts["AF"] == 1 and s.counts["CR"] == 0
    assert set(s.counts) == set(CODES)


def test_uncoded_turns_fail_unless_allowed():
    d = coded([["Q"]])
    raw = d.model_dump()
    raw["turns"].append({"role": "client", "text": "ok"})
    raw["turns"].append({"role": "counselor", "text": "Tell me more."})
    from mi_llm.corpus.schema import Dialogue

    d2 = Dialogue.model_validate(raw)
    with pytest.raises(MiLlmError, match="turn 4 is not coded"):
        CodedSession.from_dialogue(d2)
    s = score_session(CodedSession.from_dialogue(d2, allow_uncoded=True))
    assert s.uncoded_volleys == 1 and s.n_volleys == 2 and s.counts["Q"] == 1


def test_empty_session_is_an_error():
    from mi_llm.corpus.schema import Dialogue

    d = Dialogue.model_validate(
        {"id": "e", "source": "t", "language": "en", "turns": [{"role": "client", "text": "hi"}]}
    )
    with pytest.raises(MiLlmError, match="'e' is empty"):
        score_session(d)
