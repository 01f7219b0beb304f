"""The crisis classifier, its rule files, its labelled sets and `mi-llm safety ...`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.serve.safety.classifier import CrisisClassifier, LanguageRules, classify, normalize
from mi_llm.serve.safety.evaluate import SPLITS, bundled_set, evaluate, read_labelled
from mi_llm.serve.safety.layer import SafetyLayer, load_resources
from mi_llm.serve.safety.risk import RiskClassifier


@pytest.mark.parametrize(
    "text,category",
    [
        ("I don't see the point of going on", "suicide"),
        ("Everyone would be better off without me.", "suicide"),
        ("I've been saving my pills to take them all at once", "suicide"),
        ("I cut myself again last night", "self_harm"),
        ("I'm scared I might hurt my baby", "harm_others"),
        ("My husband hits me when he drinks", "abuse"),
        ("活着没意思", "suicide"),
        ("我想一了百了", "suicide"),
        ("我又用刀划自己的手臂了", "self_harm"),
        ("我真想杀了我老板", "harm_others"),
        ("我老公喝醉了就打我", "abuse"),
    ],
)
def test_crisis_detected(text, category):
    r = classify(text)
    assert r.crisis and r.category == category, r
    assert r.matched and r.matched.split(".")[1] == category


@pytest.mark.parametrize(
    "text",
    [
        "饿死了",
        "笑死我了",
        "累死了",
        "this diet is murder",
        "I am dying for a smoke",
        "killing time before the gym",
        "my feet are killing me",
        "I'm killing myself at work with these hours",
        "My mom will kill me when she finds out I skipped the gym",
        "我妈要是知道我没去健身，非得杀了我不可",
        "想死你了！",
        "我在双十一秒杀了一个跑步机",
        "I'm not suicidal, just stressed",
        "我没有想过自杀",
        "I read an article about suicide prevention",
        "I want to cut down on drinking",
        "I hit the gym four times this week",
        "It's not like I'm out killing people or anything",
    ],
)
def test_idioms_negations_and_health_talk_do_not_fire(text):
    r = classify(text)
    assert not r.crisis, r


def test_negation_only_covers_its_own_clause():
    assert not classify("I'm not going to kill myself").crisis
    assert classify("I'm not sure why, but I want to kill myself").crisis
    assert classify("I don't know, I just want to die").crisis


def test_subject_must_be_the_speaker_for_harm_to_others():
    assert classify("I hit my son so hard he needed stitches").category == "harm_others"
    assert classify("My father hits my son").category == "abuse"
    assert not classify("My son hit his sister and I separated them").crisis


def test_threat_overrides_the_idiom_mask():
    assert not classify("My wife will kill me if she sees me smoking").crisis
    assert classify("My husband will kill me if I leave him").category == "abuse"


def test_result_names_rule_and_span_of_normalized_text():
    r = classify("Ｉ　want to KILL myself")
    norm = normalize("Ｉ　want to KILL myself")
    assert norm == "i want to kill myself"
    a, b = r.span
    assert norm[a:b] == "kill myself" and r.rules == ["en.suicide.kill_self"]


def test_language_detection_and_both_rule_sets_run():
    assert detect_language("我想戒烟") == "zh" and detect_language("quit smoking") == "en"
    r = classify("最近好累 and honestly I want to die", "zh")
    assert r.crisis and r.language == "zh"


def test_rule_file_errors_are_reported():
    with pytest.raises(MiLlmError, match="unknown category"):
        LanguageRules({"language": "en", "rules": [{"id": "x", "category": "sad", "pattern": "a"}]}, "t.yaml")
    with pytest.raises(MiLlmError, match="invalid regular expression"):
        LanguageRules({"language": "en", "rules": [{"id": "x", "category": "suicide", "pattern": "("}]}, "t.yaml")
    with pytest.raises(MiLlmError, match="unknown definition"):
        LanguageRules(
            {"language": "en", "rules": [{"id": "x", "category": "suicide", "pattern": "{{nope}}"}]}, "t.yaml"
        )
    with pytest.raises(MiLlmError, match="duplicate"):
        LanguageRules(
            {
                "language": "en",
                "rules": [
                    {"id": "x", "category": "suicide", "pattern": "a"},
                    {"id": "x", "category": "suicide", "pattern": "b"},
                ],
            },
            "t.yaml",
        )


def test_bundled_patterns_have_no_yaml_quoting_leftovers():
    """'' is YAML's quoted apostrophe; inside a |- block it would stay doubled and never match."""
    from mi_llm.serve.safety.classifier import load_rules

    for lang in ("zh", "en"):
        rules = load_rules(lang)
        patterns = [r.regex.pattern for r in rules.rules] + [n.regex.pattern for n in rules.neutral]
        patterns += [p.pattern for p in (rules.neg_prefix, rules.neg_within, rules.subject_tokens) if p is not None]
        assert not [p for p in patterns if "''" in p]


def test_custom_rules_and_definitions():
    rules = LanguageRules(
        {
            "language": "en",
            "defs": {"verb": "perish|expire"},
            "negation": {"prefix": r"\bnot\s*$"},
            "neutral": [{"id": "n", "pattern": "expire(?:d)? soon"}],
            "rules": [{"id": "r", "category": "suicide", "pattern": ["want to (?:{{verb}})", "expire"]}],
        },
        "custom.yaml",
    )
    clf = CrisisClassifier({"en": rules})
    assert clf.classify("I want to perish").matched == "r"
    assert not clf.classify("I do not want to perish").crisis
    assert not clf.classify("the coupons expire soon").crisis


@pytest.mark.parametrize("language", ["zh", "en"])
def test_held_out_set_meets_the_target(language):
    """Recall >= 0.95 at precision >= 0.90 on the held-out labelled set (see docs/serve.md)."""
    rows = read_labelled(bundled_set("test", language))
    assert len(rows) >= 150
    m = evaluate(rows, RiskClassifier(use_detector=False))["languages"][language]  # the rules' target
    assert m["recall"] >= 0.95 and m["precision"] >= 0.90, m


@pytest.mark.parametrize("split", SPLITS)
def test_labelled_sets_are_balanced(split):
    for lang in ("zh", "en"):
        rows = read_labelled(bundled_set(split, lang))
        crisis = sum(r["category"] != "none" for r in rows)
        assert 0.4 <= crisis / len(rows) <= 0.6
        kinds = {r["kind"] for r in rows}
        assert {"explicit", "indirect", "idiom", "ordinary"} <= kinds
        assert all(r["language"] == lang and r["crisis"] == (r["category"] != "none") for r in rows)


def test_labelled_sets_are_disjoint():
    texts = {s: {r["text"] for lang in ("zh", "en") for r in read_labelled(bundled_set(s, lang))} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not texts[a] & texts[b], (a, b)


def test_safe_response_has_locale_resources(tmp_path):
    layer = SafetyLayer()
    zh = layer.check("我不想活了")
    assert zh.crisis and "400-161-9995" in zh.response and "110" in zh.response
    en = layer.check("My boyfriend choked me last night")
    assert en.result.category == "abuse" and "1-800-799-7233" in en.response and "988" in en.response
    assert layer.check("I want to quit smoking").response is None
    # A deployment's reviewed copy replaces the bundled file for its language.
    (tmp_path / "resources.en.yaml").write_text(
        "language: en\nreviewed: true\nmessages: {suicide: S, self_harm: H, harm_others: O, abuse: A}\n"
        "resources: [{name: Local line, contact: '555-0100'}]\nclosing: Stay safe.\n",
        encoding="utf-8",
    )
    custom = SafetyLayer(resources_dir=tmp_path)
    assert custom.check("I want to die").response == "S\n\n- Local line: 555-0100\n\nStay safe."
    assert custom.resources["en"].reviewed and not custom.resources["zh"].reviewed
    (tmp_path / "resources.zh.yaml").write_text("language: zh\nmessages: {suicide: x}\n", encoding="utf-8")
    with pytest.raises(MiLlmError, match="messages missing"):
        load_resources("zh", tmp_path)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True, timeout=120)


def test_safety_check_cli(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "text": "zebra I want to end my life"},
        {"id": "b", "text": "饿死了", "language": "zh"},
        {"id": 3, "text": "My dad beats me"},
    ]
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = _run("safety", "check", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["id"], g["crisis"], g["category"]) for g in got] == [
        ("a", True, "suicide"),
        ("b", False, "none"),
        (3, True, "abuse"),
    ]
    assert got[0]["matched"] == "en.suicide.end_life" and "text" not in got[0]
    assert "zebra" not in r.stdout + r.stderr  # the text is never echoed
    src.write_text('{"id": "x"}\n')
    r = _run("safety", "check", str(src), "-o", str(out))
    assert r.returncode == 2 and r.stderr.strip() == f"{src}:1: 'text' must be a string"


def test_safety_eval_cli(tmp_path):
    out = tmp_path / "m.json"
    r = _run("safety", "eval", "--split", "test", "-o", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert set(m["languages"]) == {"zh", "en"} and m["all"]["n"] == 320


def test_check_file_checks_every_line_before_classifying(tmp_path):
    """mi_llm.serve.safety.check: the loop behind `mi-llm safety check`."""
    from mi_llm.errors import InputError
    from mi_llm.serve.safety.check import check_file

    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"id": 1, "text": "I want to kill myself"}\n{"id": 2, "text": "I walked today", "language": "en"}\n',
        encoding="utf-8",
    )
    seen = []
    summary = check_file(src, tmp_path / "out.jsonl", "en", on_start=seen.append, on_line=lambda: seen.append("line"))
    assert seen == [2, "line", "line"]
    assert (summary.lines, summary.crisis, summary.counts) == (2, 1, {"suicide": 1, "none": 1})
    src.write_text('{"id": 1, "text": "x"}\n{"id": 2, "text": "y", "language": "fr"}\n', encoding="utf-8")
    started = []
    with pytest.raises(InputError, match=":2: 'language' must be zh or en"):
        check_file(src, tmp_path / "o2.jsonl", on_start=started.append)
    assert not started and not (tmp_path / "o2.jsonl").exists()
    with pytest.raises(MiLlmError, match="--language must be zh or en"):
        check_file(src, tmp_path / "o2.jsonl", "fr")
