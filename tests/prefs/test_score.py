"""Reply scoring and the guards against degenerate replies."""

from __future__ import annotations

import pytest

from mi_llm.prefs.config import ScoreConfig
from mi_llm.prefs.pairs import ScoredReply
from mi_llm.prefs.score import Candidate, choose_pair, degenerate_reason, score_candidates
from tests.prefs.conftest import KeywordCoder

CFG = ScoreConfig()
CLIENT = "My boss keeps giving me more work and I never get to sleep before two."


@pytest.mark.parametrize(
    ("text", "language", "cut", "reason"),
    [
        ("It sounds like the nights are the hardest part for you.", "en", False, None),
        ("Okay.", "en", False, "too short"),
        ("It sounds like the nights are hard.", "en", True, "truncated"),
        (" ".join(["word"] * 130), "en", False, "too long"),
        ("听起来你最近的压力非常大，晚上也睡不好。", "en", False, "language"),
        ("听起来你最近的压力非常大，晚上也睡不好。", "zh", False, None),
        ("you feel tired you feel tired you feel tired you feel tired you feel tired", "en", False, "repetition"),
        ("My boss keeps giving me more work and I never get to sleep", "en", False, "copies the client"),
    ],
)
def test_guards(text, language, cut, reason):
    assert degenerate_reason(text, CLIENT, language, CFG, cut) == reason


def test_score_is_the_mean_worth_of_the_codes():
    cands = [
        Candidate("It sounds like work is eating your evenings.", CLIENT, "en"),
        Candidate("You feel tired. What keeps you up?", CLIENT, "en"),
        Candidate("You should quit that job tomorrow morning.", CLIENT, "en"),
    ]
    cr, mixed, persuade = score_candidates(KeywordCoder(), cands, CFG)
    assert cr.codes == ["CR"] and cr.score == CFG.weights["CR"]
    assert mixed.codes == ["SR", "Q"] and mixed.score == (CFG.weights["SR"] + CFG.weights["Q"]) / 2
    assert persuade.score == CFG.weights["Persuade"]
    assert cr.score > mixed.score > persuade.score


def test_custom_weights_change_the_order():
    cfg = ScoreConfig(weights={"Q": 5.0, "CR": 1.0})
    q, cr = score_candidates(
        KeywordCoder(),
        [Candidate("What matters most to you?", CLIENT, "en"), Candidate("It sounds like rest matters.", CLIENT, "en")],
        cfg,
    )
    assert q.score > cr.score


def _r(text, score, degenerate=None):
    return ScoredReply(text=text, score=score, codes=[], degenerate=degenerate)


def test_choose_pair_best_and_worst_with_margin():
    replies = [_r("a", 1.0), _r("b", 3.0), _r("c", 2.0), _r("d", -2.0)]
    chosen, rejected = choose_pair(replies, 0.5)
    assert (chosen.text, rejected.text) == ("b", "d")


def test_choose_pair_needs_the_margin_or_a_degenerate_reply():
    close = [_r("a", 2.0), _r("b", 2.2)]
    assert choose_pair(close, 0.5) is None
    with_bad = [*close, _r("zzz", 3.0, "repetition")]
    chosen, rejected = choose_pair(with_bad, 0.5)
    assert chosen.text == "b" and rejected.degenerate == "repetition"  # a degenerate reply is never chosen
    assert choose_pair(with_bad, 0.5, degenerate_rejected=False) is None


def test_choose_pair_ignores_duplicates_and_all_degenerate():
    assert choose_pair([_r("same", 3.0), _r("same", 3.0)], 0.0) is None
    assert choose_pair([_r("x", None, "too short"), _r("y", None, "language")], 0.0) is None


def test_a_strategy_tag_is_not_scored_but_kept():
    (tagged,) = score_candidates(
        KeywordCoder(), [Candidate("[Q] It sounds like work is eating your evenings.", CLIENT, "en")], CFG
    )
    assert tagged.codes == ["CR"] and tagged.score == CFG.weights["CR"] and tagged.text.startswith("[Q] ")


def test_a_reply_cut_at_the_limit_keeps_its_whole_utterances():
    cands = [
        Candidate("It sounds like work is eating your evenings. What would you", CLIENT, "en", cut_at_limit=True),
        Candidate("[CR] It sounds like work is eating your evenings. And the", CLIENT, "en", cut_at_limit=True),
        Candidate("听起来工作占满了你的晚上，你很累。你希望", CLIENT, "zh", cut_at_limit=True),
        Candidate("It sounds like work is eating your evenings and", CLIENT, "en", cut_at_limit=True),
        Candidate("It sounds like work is eating your evenings. What would you", CLIENT, "en"),
    ]
    en, tagged, zh, nothing_whole, not_cut = score_candidates(KeywordCoder(), cands, CFG)
    assert (en.text, en.trimmed, en.degenerate, en.codes) == (
        "It sounds like work is eating your evenings.",
        True,
        None,
        ["CR"],
    )
    assert tagged.text == "[CR] It sounds like work is eating your evenings." and tagged.trimmed
    assert zh.text == "听起来工作占满了你的晚上，你很累。" and zh.trimmed and zh.degenerate is None
    assert nothing_whole.degenerate == "truncated" and not nothing_whole.trimmed
    assert nothing_whole.text == cands[3].text
    assert not not_cut.trimmed and not_cut.text == cands[4].text and len(not_cut.codes) == 2
