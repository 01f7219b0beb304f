"""The learned crisis detector: data readers, training, thresholds, weights, risk levels,
the layer's check-in, the session store's levels and `mi-llm safety train / check / eval`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from mi_llm.errors import MiLlmError
from mi_llm.serve.safety.classifier import NONE, SafetyResult
from mi_llm.serve.safety.evaluate import bundled_set, evaluate, read_labelled
from mi_llm.serve.safety.layer import SafetyLayer
from mi_llm.serve.safety.learned import LearnedDetector, default_detector
from mi_llm.serve.safety.risk import RiskClassifier
from mi_llm.serve.safety.sources import (
    LabelledText,
    from_labelled,
    read_cssrs,
    read_psysuicide,
    read_sad,
    read_shared,
)
from mi_llm.serve.safety.train import (
    TrainConfig,
    choose_thresholds,
    cross_validate,
    cross_validate_groups,
    fit,
    source_weights,
)
from mi_llm.serve.sessions import SessionStore

CRISIS_EN = [
    "I want to die tonight",
    "I am going to kill myself",
    "I have pills saved to end my life",
    "I wish I were dead",
    "nothing left, time to end my life",
    "I will jump off the roof tonight",
]
CALM_EN = [
    "I had pasta for dinner",
    "my dog likes long walks",
    "work was busy this week",
    "I want to cut down on coffee",
    "the weather is nice today",
    "we watched a film at home",
]
CRISIS_ZH = ["我想死", "我不想活了", "今晚就去跳楼", "我想自杀"]
CALM_ZH = ["今天天气很好", "我喜欢吃面条", "周末去公园散步", "工作有点忙"]


def _rows() -> list[LabelledText]:
    rows = []
    for i, t in enumerate(CRISIS_EN * 3):
        rows.append(LabelledText(t, "en", f"s{i % 3}", f"g{i}", "active_ideation"))
    for i, t in enumerate(CALM_EN * 3):
        rows.append(LabelledText(t, "en", f"s{i % 3}", f"n{i}", NONE))
    for i, t in enumerate(CRISIS_ZH * 3):
        rows.append(LabelledText(t, "zh", f"s{i % 3}", f"zg{i}", "plan" if i % 2 else "passive_ideation"))
    for i, t in enumerate(CALM_ZH * 3):
        rows.append(LabelledText(t, "zh", f"s{i % 3}", f"zn{i}", NONE))
    return rows


TINY = TrainConfig(c=10.0, validation=0.3)


@pytest.fixture(scope="module")
def tiny_detector() -> LearnedDetector:
    from mi_llm.serve.safety.learned import FeatureConfig

    return fit(_rows(), TrainConfig(features=FeatureConfig(min_df=1), c=10.0, validation=0.3))


def test_tiny_detector_separates_and_round_trips(tiny_detector, tmp_path):
    s = tiny_detector.scores(["I want to die tonight", "the weather is nice today", "我想死", "今天天气很好"])
    assert s[0] > s[1] and s[2] > s[3]
    assert 0 < tiny_detector.threshold <= tiny_detector.high_threshold <= 1
    folder = tiny_detector.save(tmp_path / "det")
    back = LearnedDetector.load(folder)
    texts = ["I want to end my life", "walks in the park", "不想活了"]
    assert np.allclose(back.scores(texts), tiny_detector.scores(texts), atol=1e-5)
    assert [t for _, t in back.predict(texts)] == [t for _, t in tiny_detector.predict(texts)]
    assert back.info["rows"] and back.info["validation"]["rows"] > 0
    assert len(back.scores([])) == 0 and back.predict([]) == []


def test_load_rejects_a_folder_that_is_not_a_detector(tmp_path):
    with pytest.raises(MiLlmError, match="not a crisis detector folder"):
        LearnedDetector.load(tmp_path)
    (tmp_path / "detector.json").write_text('{"format": "other"}')
    (tmp_path / "detector.npz").write_bytes(b"x")
    with pytest.raises(MiLlmError, match="cannot load"):
        LearnedDetector.load(tmp_path)


def test_choose_thresholds_keeps_the_recall_target():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    gold = np.array([True, True, False, True, True, False, False, True, False, False])
    t, high = choose_thresholds(scores, gold, recall_target=0.8, high_precision=1.0)
    flagged = scores >= t
    assert flagged[gold].mean() >= 0.8
    assert t == 0.5  # the highest that keeps 4 of 5 positives
    assert high == 0.8  # the lowest with precision 1.0 (0.9, 0.8 are both crisis)
    with pytest.raises(MiLlmError, match="no crisis rows"):
        choose_thresholds(scores, np.zeros(10, dtype=bool), 0.9, 0.9)


def test_source_weights_give_every_source_the_same_total():
    rows = [LabelledText("a", "en", "big", str(i), NONE) for i in range(9)] + [
        LabelledText("b", "en", "small", "x", NONE)
    ]
    w = source_weights(rows)
    assert np.isclose(w[:9].sum(), w[9:].sum()) and np.isclose(w.mean(), 1.0)


def test_fit_needs_both_classes():
    with pytest.raises(MiLlmError, match="at least 4 crisis"):
        fit([LabelledText("x", "en", "s", str(i), NONE) for i in range(10)])


def test_cross_validation_scores_each_source_without_it():
    from mi_llm.serve.safety.learned import FeatureConfig

    scored = cross_validate(_rows(), TrainConfig(features=FeatureConfig(min_df=1), c=10.0, validation=0.3))
    assert len(scored) == len(_rows())
    assert {s.row.source for s in scored} == {"s0", "s1", "s2"}
    crisis = [s.score for s in scored if s.row.crisis]
    calm = [s.score for s in scored if not s.row.crisis]
    assert np.mean(crisis) > np.mean(calm)


@pytest.fixture
def fitted_groups(monkeypatch) -> list[set[str]]:
    """The groups each detector fitted by the cross-validations was trained on, in order."""
    from mi_llm.serve.safety import train as train_module

    seen: list[set[str]] = []
    real_fit = train_module.fit

    def fit_and_record(fit_rows, cfg):
        seen.append({r.group for r in fit_rows})
        return real_fit(fit_rows, cfg)

    monkeypatch.setattr(train_module, "fit", fit_and_record)
    return seen


def _small_cfg() -> TrainConfig:
    from mi_llm.serve.safety.learned import FeatureConfig

    return TrainConfig(features=FeatureConfig(min_df=1), c=10.0, validation=0.3)


def test_group_folds_score_every_row_once_by_a_detector_that_never_saw_its_group(fitted_groups):
    rows, seen, cfg = _rows(), fitted_groups, _small_cfg()
    scored = cross_validate_groups(rows, 3, cfg, eval_only=("s2",))
    assert sorted(id(s.row) for s in scored) == sorted(id(r) for r in rows)  # every row, once
    assert len(seen) == 3
    trainable = {r.group for r in rows if r.source != "s2"}
    assert all(not g & {r.group for r in rows if r.source == "s2"} for g in seen)  # s2: never trained on
    held = [trainable - g for g in seen]  # each fit lacks exactly its own fold's groups
    assert all(held) and sum(len(h) for h in held) == len(trainable) and set().union(*held) == trainable
    crisis = [s.score for s in scored if s.row.crisis]
    calm = [s.score for s in scored if not s.row.crisis]
    assert np.mean(crisis) > np.mean(calm)


def test_group_folds_with_a_train_share_fit_on_that_share_of_the_other_folds_groups(fitted_groups):
    rows, seen, cfg = _rows(), fitted_groups, _small_cfg()
    full = cross_validate_groups(rows, 3, cfg)
    whole = list(seen)
    seen.clear()
    half = cross_validate_groups(rows, 3, cfg, train_share=0.5, share_seed=1)
    assert sorted(id(s.row) for s in half) == sorted(id(s.row) for s in full)  # still every row, once
    for part, all_groups in zip(seen, whole):
        assert part < all_groups and abs(len(part) - len(all_groups) / 2) <= 1
    with pytest.raises(MiLlmError, match="train_share"):
        cross_validate_groups(rows, 3, cfg, train_share=0.0)


# ---------------------------------------------------------------- readers


def test_readers_map_labels_and_groups(tmp_path):
    ps = tmp_path / "valid.json"
    ps.write_text(
        json.dumps(
            [
                {"idx": 1, "text": "我想死", "labels": ["主动自杀意图", "用户攻击行为"], "data_source": "social_media"},
                {"idx": 2, "text": "今天好累", "labels": ["与自杀/自伤/攻击行为无关"], "data_source": "synthetic"},
                {"idx": 3, "text": "朋友闹自杀", "labels": ["关于自杀的探索"], "data_source": "social_media"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    got = list(read_psysuicide(ps))
    assert [r.subcategory for r in got] == ["active_ideation", NONE, "exploring"]
    assert got[0].source == "psysuicide:social_media" and got[0].crisis and got[0].category == "suicide"
    assert not got[2].trainable and not got[2].crisis
    sad = tmp_path / "sad.csv"
    sad.write_text("sID,sentence\n1,My rent is late\n2,?\n", encoding="utf-8")
    assert [r.text for r in read_sad(sad)] == ["My rent is late"]
    cs = tmp_path / "cssrs.csv"
    cs.write_text(
        "User,Post,Label\nuser-1,\"['first post', 'second post']\",Ideation\n"
        "user-2,\"['cut short post', 'and another\",Supportive\nuser-3,\"['x y']\",Indicator\n",
        encoding="utf-8",
    )
    posts = list(read_cssrs(cs))
    assert [(p.text, p.group, p.subcategory) for p in posts] == [
        ("first post", "cssrs:user-1", "active_ideation"),
        ("second post", "cssrs:user-1", "active_ideation"),
        ("cut short post", "cssrs:user-2", NONE),
        ("and another", "cssrs:user-2", NONE),
        ("x y", "cssrs:user-3", "indicator"),
    ]
    with pytest.raises(MiLlmError, match="missing crisis data"):
        read_shared(tmp_path)


def test_from_labelled_keeps_fine_types_and_marks_inferred_ones():
    rows = from_labelled(
        [
            {"id": 1, "text": "a", "category": "suicide"},
            {"id": 2, "text": "b", "category": "suicide", "subcategory": "plan"},
            {"id": 3, "text": "c", "category": "abuse"},
        ],
        "user",
    )
    assert [(r.subcategory, r.fine) for r in rows] == [("active_ideation", False), ("plan", True), ("abuse", True)]


def test_real_crisis_data_reads(shared_data):
    rows = read_shared(shared_data)
    sources = {r.source for r in rows}
    assert {"sad", "cssrs", "psysuicide:client_counselor", "psysuicide:social_media"} <= sources
    assert sum(r.source.startswith("psysuicide") for r in rows) == 1480
    assert len({r.group for r in rows if r.source == "cssrs"}) == 500


# ---------------------------------------------------------------- risk levels


class _Fixed:
    """A detector stand-in with fixed scores per text."""

    threshold, high_threshold = 0.5, 0.8

    def __init__(self, scores: dict[str, tuple[float, str]]):
        self.table = scores

    def predict(self, texts):
        return [self.table.get(t, (0.01, "active_ideation")) for t in texts]


def test_levels_from_rules_learned_and_context():
    det = _Fixed(
        {
            "quietly planning": (0.9, "plan"),
            "no point anymore": (0.6, "active_ideation"),
            "wish i could disappear": (0.95, "passive_ideation"),
            "i got it today": (0.3, "plan"),
            "tired of everything\ni got it today": (0.7, "plan"),
        }
    )
    clf = RiskClassifier(detector=det)  # type: ignore[arg-type]
    r = clf.classify("quietly planning", "en")
    assert (r.crisis, r.level, r.category, r.subcategory, r.matched) == (
        True,
        "high",
        "suicide",
        "plan",
        "learned.plan",
    )
    assert clf.classify("no point anymore", "en").level == "low"  # under high_threshold
    assert clf.classify("wish i could disappear", "en").level == "low"  # passive ideation stays low
    assert not clf.classify("i got it today", "en").crisis
    r = clf.classify("i got it today", "en", ["tired of everything"])
    assert (r.crisis, r.level, r.detected_by) == (True, "low", ["context"])
    # with a history, both readings must be a crisis
    assert not clf.classify("no point anymore", "en", ["I smoke a lot"]).crisis
    r = clf.classify("I want to kill myself", "en")  # a rule: high, the rule's category
    assert (r.level, r.category, r.detected_by[0]) == ("high", "suicide", "rules")
    assert r.matched and r.matched.startswith("en.suicide")
    calm = clf.classify("the weather is nice", "en")
    assert (calm.crisis, calm.level, calm.score) == (False, "none", 0.01)
    rules_only = RiskClassifier(use_detector=False)
    assert not rules_only.classify("quietly planning", "en").crisis
    learned_only = RiskClassifier(detector=det, use_rules=False)  # type: ignore[arg-type]
    assert not learned_only.classify("I want to kill myself", "en").crisis


def test_layer_answers_high_and_checks_in_on_low():
    det = _Fixed(
        {
            "no point anymore": (0.6, "active_ideation"),
            "hello\nno point anymore": (0.6, "active_ideation"),
            "quietly planning": (0.9, "plan"),
        }
    )
    layer = SafetyLayer(RiskClassifier(detector=det))  # type: ignore[arg-type]
    low = layer.check("no point anymore", "en")
    assert low.crisis and low.level == "low" and low.response is None
    assert low.check_in and "988" in low.check_in
    assert low.public() == {"crisis": True, "category": "suicide", "level": "low"}
    high = layer.check("quietly planning", "en")
    assert high.level == "high" and high.response and high.check_in is None
    # a high risk in an earlier message wins over a low one in the new message
    d, which = layer.check_messages(["quietly planning", "hello", "no point anymore"], "en")
    assert (d.level, which) == ("high", 0)
    d, which = layer.check_messages(["hello", "no point anymore"], "en")
    assert (d.level, which) == ("low", 1)


def test_session_store_records_levels_and_upgrades_old_databases(tmp_path):
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE safety_events (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, "
        "created REAL NOT NULL, category TEXT NOT NULL, rule TEXT);"
    )
    con.close()
    store = SessionStore(db)
    try:
        store.open("s1", "local", "en")
        store.flag("s1", "suicide", "en.suicide.x")
        store.flag("s1", "suicide", "learned.passive_ideation", "low")
        assert [e["level"] for e in store.events("s1")] == ["high", "low"]
        assert [e["rule"] for e in store.events("s1")][1] == "learned.passive_ideation"
    finally:
        store.close()


# ---------------------------------------------------------------- the shipped detector


def test_shipped_detector_loads_and_is_small_and_fast():
    import time

    det = default_detector()
    assert det.info.get("rows") and 0 < det.threshold <= det.high_threshold
    assert set(det.types) <= {
        "attempt",
        "plan",
        "active_ideation",
        "self_harm",
        "passive_ideation",
        "harm_others",
        "abuse",
    }
    msgs = ["I had a long day at work and I'm tired", "我今天很累"] * 20
    t0 = time.perf_counter()
    det.scores(msgs)
    assert (time.perf_counter() - t0) / len(msgs) < 0.05  # well under 50 ms a message even on a busy CPU


def test_heldout_set_is_separate_and_has_levels():
    rows = [r for lang in ("zh", "en") for r in read_labelled(bundled_set("heldout", lang))]
    assert len(rows) == 110 and {r["level"] for r in rows} == {"none", "low", "high"}
    written = {
        r["text"]
        for s in ("dev", "test", "test2", "test3")
        for lang in ("zh", "en")
        for r in read_labelled(bundled_set(s, lang))
    }
    assert not written & {r["text"] for r in rows}  # never trained on
    m = evaluate(rows)
    assert m["all"]["n"] == 110 and m["all"]["level_accuracy"] is not None


# ---------------------------------------------------------------- the commands


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich tables are not cut
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True, env=env, timeout=300)


def test_safety_train_check_and_eval_commands(tmp_path):
    data = tmp_path / "mine.jsonl"
    lines = [
        {"id": i, "text": t, "language": "en", "category": "suicide" if t in CRISIS_EN else "none"}
        for i, t in enumerate((CRISIS_EN + CALM_EN) * 2)
    ]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "det"
    r = _run("safety", "train", "--data", str(data), "--no-bundled", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "detector.json").is_file() and "threshold" in r.stderr + r.stdout
    msgs = tmp_path / "in.jsonl"
    msgs.write_text(
        json.dumps({"id": "a", "text": "the weather is nice today"})
        + "\n"
        + json.dumps({"id": "b", "text": "I wish I were dead", "history": ["hello"]})
        + "\n",
        encoding="utf-8",
    )
    got_path = tmp_path / "out.jsonl"
    r = _run("safety", "check", str(msgs), "-o", str(got_path), "--crisis-model", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in got_path.read_text().splitlines()]
    assert {"id", "crisis", "level", "category", "score"} <= set(got[0]) and "text" not in got[0]
    assert got[0]["crisis"] is False and got[1]["crisis"] is True
    r = _run("safety", "eval", "--data", str(data), "--detector", "learned", "--crisis-model", str(out))
    assert r.returncode == 0 and "FPR" in r.stdout + r.stderr
    r = _run("safety", "eval", "--detector", "maybe")
    assert r.returncode == 2 and "--detector" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "x", "history": "no"}) + "\n")
    r = _run("safety", "check", str(bad), "-o", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and "bad.jsonl:1:" in r.stderr and "history" in r.stderr


def test_eval_result_has_false_positive_rate():
    m = evaluate(
        [
            {"id": 1, "text": "I want to kill myself", "language": "en", "category": "suicide"},
            {"id": 2, "text": "I love my garden", "language": "en", "category": "none"},
        ],
        RiskClassifier(use_detector=False),
    )
    assert m["all"]["false_positive_rate"] == 0.0 and m["all"]["recall"] == 1.0


def test_safety_result_level_defaults_from_crisis():
    assert SafetyResult(crisis=True, category="suicide", language="en").level == "high"
    assert SafetyResult(crisis=False, category=NONE, language="en").level == "none"


# ---------------------------------------------------------------- the server and the chat


def test_server_low_risk_answers_with_check_in_and_flags(start_server, tmp_path):
    from tests.serve.conftest import openai_client

    det = _Fixed({"no point anymore": (0.6, "active_ideation"), "quietly planning": (0.9, "plan")})
    db = tmp_path / "levels.sqlite3"
    server, engine, store = start_server(db=db, safety=SafetyLayer(RiskClassifier(detector=det)))  # type: ignore[arg-type]
    client = openai_client(server, key=None)
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "no point anymore"}], extra_body={"session_id": "low-1"}
    )
    text = r.choices[0].message.content
    assert text.startswith("You said: no point anymore\n\n") and "988" in text  # the model answered, then the check-in
    assert r.model_extra["mi_llm"]["safety"] == {"crisis": True, "category": "suicide", "level": "low"}
    assert len(engine.calls) == 1
    assert [(e["level"], e["rule"]) for e in store.events("low-1")] == [("low", "learned.active_ideation")]
    hist = store.history("low-1")
    assert [m.get("safety") for m in hist] == ["suicide", "suicide"] and hist[1]["content"] == text
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "no point anymore"}], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed.startswith("You said: no point anymore") and "988" in streamed
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "quietly planning"}], extra_body={"session_id": "low-1"}
    )
    assert r.model_extra["mi_llm"]["safety"]["level"] == "high" and len(engine.calls) == 2  # not called again
    out = _run("safety", "flagged", "--db", str(db))
    shown = out.stdout + out.stderr
    assert out.returncode == 0 and "low-1" in shown and "high 1, low 1" in shown
    assert "no point" not in shown


def test_chat_low_risk_appends_check_in():
    from mi_llm.llm.backends.base import GenerationConfig
    from mi_llm.serve.chat import ChatSession, Turn
    from mi_llm.serve.engine import EchoEngine

    det = _Fixed({"no point anymore": (0.6, "active_ideation")})
    chat = ChatSession(EchoEngine(), SafetyLayer(RiskClassifier(detector=det)), GenerationConfig(), language="en")  # type: ignore[arg-type]
    items = list(chat.respond("no point anymore"))
    turn = items[-1]
    assert isinstance(turn, Turn) and turn.crisis and turn.category == "suicide"
    assert turn.text.startswith("You said: no point anymore") and "988" in turn.text
    assert chat.flagged and chat.history[-1]["content"] == turn.text
