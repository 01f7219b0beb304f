"""Splitting counselor turns into utterances (zh, en), checked by hand and on the demo corpus."""

from __future__ import annotations

import re

import pytest

from mi_llm.corpus.language import detect_language
from mi_llm.miti.segment import split_utterances
from mi_llm.resources import demo_dialogues


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "What brings you here? You said your doctor sent you.",
            ["What brings you here?", "You said your doctor sent you."],
        ),
        ("Dr. Lee told you that. It scared you!", ["Dr. Lee told you that.", "It scared you!"]),
        ("You know, e.g. walking at lunch. That could work.", ["You know, e.g. walking at lunch.", "That could work."]),
        ("So... you're not sure. \"I can't,\" you said.", ["So... you're not sure.", '"I can\'t," you said.']),
        ("It costs $9.50 a pack. Wow.", ["It costs $9.50 a pack.", "Wow."]),
        ("No. God, no. That's the thing.", ["No.", "God, no.", "That's the thing."]),
        ("Item No. 5 is next. Okay.", ["Item No. 5 is next.", "Okay."]),  # "No." before a number
        ('She said "no." Then what?', ['She said "no."', "Then what?"]),
        ("one thought without an end", ["one thought without an end"]),
        ("   ", []),
    ],
)
def test_english(text, expected):
    assert split_utterances(text, "en") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("你好。你今天想聊点什么？", ["你好。", "你今天想聊点什么？"]),
        ("半斤？这也太多了！", ["半斤？", "这也太多了！"]),
        ("你说“我做不到。”然后呢？", ["你说“我做不到。”", "然后呢？"]),
        ("好的……那我们继续", ["好的……", "那我们继续"]),
        ("听起来你已经想了很久", ["听起来你已经想了很久"]),
        ("You said it. 你说过的。", ["You said it.", "你说过的。"]),
    ],
)
def test_chinese(text, expected):
    assert split_utterances(text, "zh") == expected


def test_pieces_add_up_to_the_turn():
    text = "  Okay.  So you tried twice?!  That's   real effort. ) "
    pieces = split_utterances(text, "en")
    assert re.sub(r"\s+", "", "".join(pieces)) == re.sub(r"\s+", "", text)
    assert all(p == p.strip() and p for p in pieces)


def test_language_guess():
    assert detect_language("你今天想聊点什么？") == "zh"
    assert detect_language("What would you like to talk about?") == "en"
    assert split_utterances("你好。你今天想聊点什么？") == ["你好。", "你今天想聊点什么？"]


@pytest.mark.parametrize("language, minimum", [("en", 0.97), ("zh", 0.95)])
def test_agrees_with_the_demo_corpus_boundaries(language, minimum):
    """The demo corpus's authors split counselor turns by hand; our splitter reproduces most turns."""
    same = total = 0
    for d in demo_dialogues(language):
        for t in d.turns:
            if t.codes:
                total += 1
                same += [u.text.strip() for u in t.codes] == split_utterances(t.text, language)
    assert total > 300
    assert same / total >= minimum
