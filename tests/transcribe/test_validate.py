from __future__ import annotations

import json

import pytest

from mi_llm.transcribe.prompt import prepare
from mi_llm.transcribe.validate import ValidationConfig, language_shares, validate_answer
from tests.transcribe.conftest import make_dialogue
from tests.transcribe.server import REPLY, good_answer

EN = prepare(make_dialogue("a", "en"))
ZH = prepare(make_dialogue("b", "zh"))


def turns_of(p):
    return [{"role": r, "text": t} for r, t in p.turns]


def answer(turns) -> str:
    return json.dumps({"turns": turns}, ensure_ascii=False)


def good(p, lang):
    return json.loads(good_answer(turns_of(p), lang))["turns"]


@pytest.mark.parametrize("p,lang", [(EN, "en"), (ZH, "zh")])
def test_good_answer_passes(p, lang):
    v = validate_answer(answer(good(p, lang)), p)
    assert v.ok, v.errors
    assert len(v.turns) == 6 and v.turns[1] == ("counselor", REPLY[lang])


def test_fenced_json_and_role_aliases_are_accepted():
    turns = good(EN, "en")
    for t in turns:
        t["role"] = {"client": "User", "counselor": "assistant"}[t["role"]]
    v = validate_answer("```json\n" + answer(turns) + "\n```", EN)
    assert v.ok, v.errors
    assert [r for r, _ in v.turns][:2] == ["client", "counselor"]


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "empty"),
        ("I cannot help with that.", "no JSON object"),
        ('{"turns": [{"role": "client", "text": "x"}', "not valid JSON"),
        ('{"turns": [{"role": "client" "text": "x"}]}', "not valid JSON"),
        ('{"dialogue": []}', '"turns" list'),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_unparseable(text, fragment):
    v = validate_answer(text, EN)
    assert not v.ok and fragment in v.reason


def test_malformed_from_server_script():
    v = validate_answer(answer(good(EN, "en"))[:-3], EN)
    assert not v.ok and "JSON" in v.reason


def test_wrong_role_order_and_last_turn():
    turns = good(EN, "en")
    v = validate_answer(answer([turns[1], *turns]), EN)
    assert "turn 1 is by the counselor but should be by the client" in v.reason
    v = validate_answer(answer(turns[:-1]), EN)
    assert "last turn must be a counselor turn" in v.reason
    v = validate_answer(answer([turns[0], turns[2], turns[1]]), EN)
    assert "turn 2 is by the client" in v.reason


def test_client_turn_count_is_kept_by_default_only():
    turns = good(EN, "en")[:4]
    v = validate_answer(answer(turns), EN)
    assert "2 client turns but the original has 3" in v.reason
    loose = ValidationConfig(keep_client_count=False, min_client_similarity=0.3)
    assert validate_answer(answer(turns), EN, loose).ok


@pytest.mark.parametrize(
    "p,lang,text,what",
    [
        (EN, "en", "Here is the rewritten dialogue in MI style.", "talks about the rewrite"),
        (EN, "en", "Counselor: What would you like to do?", "speaker label"),
        (EN, "en", "It sounds like walking matters to you. (complex reflection)", "MI code annotation"),
        (ZH, "zh", "以下是改写后的对话。", "talks about the rewrite"),
        (ZH, "zh", "咨询师：你怎么看？", "speaker label"),
        (ZH, "zh", "你希望更健康一些。（复杂反映）", "MI code annotation"),
    ],
)
def test_meta_commentary_inside_turns(p, lang, text, what):
    turns = good(p, lang)
    turns[3]["text"] = text
    v = validate_answer(answer(turns), p)
    assert not v.ok and v.reason.startswith("turn 4 ") and what in v.reason


def test_meta_commentary_outside_json():
    v = validate_answer("Here is the rewritten dialogue:\n" + answer(good(EN, "en")), EN)
    assert "text outside the JSON object" in v.reason
    v = validate_answer(answer(good(ZH, "zh")) + "\n以上改写遵循了MI原则。", ZH)
    assert "text outside the JSON object" in v.reason
    v = validate_answer(json.dumps({"turns": good(EN, "en"), "notes": "used OARS"}), EN)
    assert 'keys other than "turns"' in v.reason
    turns = good(EN, "en")
    turns[1]["code"] = "CR"
    assert "keys other than role and text" in validate_answer(answer(turns), EN).reason


def test_ordinary_counselor_speech_is_not_commentary():
    turns = good(EN, "en")
    turns[1]["text"] = "Sure, that makes sense. Here is what I am hearing: work leaves you tired."
    turns[3]["text"] = "You said the client in you wants change (and that matters)."
    assert validate_answer(answer(turns), EN).ok
    zh = good(ZH, "zh")
    zh[1]["text"] = "以下是我听到的：你很想改变，同时工作让你很累。"
    assert validate_answer(answer(zh), ZH).ok


def test_language_is_kept():
    v = validate_answer(answer(good(ZH, "en")), ZH)
    assert "not in Chinese" in v.reason
    turns = good(EN, "en")
    for t in turns:
        if t["role"] == "counselor":
            t["text"] = REPLY["zh"]
    assert "not in English" in validate_answer(answer(turns), EN).reason
    assert language_shares("abc 你好") == (0.4, 0.6)


def test_client_turns_keep_their_content():
    turns = good(EN, "en")
    turns[0]["text"] = turns[0]["text"].replace("meaning to", "planning to")  # light edit: fine
    assert validate_answer(answer(turns), EN).ok
    for t in turns:
        if t["role"] == "client":
            t["text"] = "I have decided to run a marathon next month with my sister."
    v = validate_answer(answer(turns), EN)
    assert "client turns were changed too much" in v.reason
    assert validate_answer(answer(turns), EN, ValidationConfig(min_client_similarity=0)).ok
