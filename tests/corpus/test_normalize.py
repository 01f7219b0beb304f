"""Normalisation: merging same-role turns, dropping empty ones, the counts it reports."""

from __future__ import annotations

from mi_llm.corpus.normalize import NormalizeOptions, NormalizeStats, merge_meta, normalize
from mi_llm.corpus.schema import Dialogue, Turn, Utterance


def dlg(turns: list[Turn], language: str = "en", did: str = "d1") -> Dialogue:
    return Dialogue(id=did, source="test", language=language, turns=turns)  # type: ignore[arg-type]


def test_merge_same_role_joins_text_codes_and_meta():
    d = dlg([
        Turn(role="client", text="I smoke.", meta={"utterances": [{"id": 1}], "line": 3}),
        Turn(role="client", text=" I want to stop. ", meta={"utterances": [{"id": 2}], "line": 4}),
        Turn(role="counselor", text="You want to stop.", codes=[Utterance(text="You want to stop.", code="SR")]),
        Turn(role="counselor", text="What would help?", codes=[Utterance(text="What would help?", code="Q")]),
    ])  # fmt: skip
    st = NormalizeStats()
    out = normalize(d, NormalizeOptions(), st)
    assert out is not None
    assert [t.text for t in out.turns] == ["I smoke. I want to stop.", "You want to stop. What would help?"]
    assert out.turns[0].meta == {"utterances": [{"id": 1}, {"id": 2}], "line": 3}
    assert [u.code for u in out.turns[1].codes or []] == ["SR", "Q"]
    assert (st.merged, st.dropped, st.turns, st.rounds, st.trailing_client) == (2, 0, 2, 1, 0)


def test_chinese_joiner_and_codes_dropped_when_one_side_uncoded():
    d = dlg([
        Turn(role="client", text="我想少喝点。"),
        Turn(role="counselor", text="你想少喝。", codes=[Utterance(text="你想少喝。", code="SR")]),
        Turn(role="counselor", text="为什么呢？"),
    ], language="zh")  # fmt: skip
    out = normalize(d, NormalizeOptions(), NormalizeStats())
    assert out is not None and out.turns[1].text == "你想少喝。为什么呢？" and out.turns[1].codes is None


def test_drop_empty_and_trailing_client_and_skip():
    st = NormalizeStats()
    d = dlg([Turn(role="counselor", text="Hello."), Turn(role="client", text="  "), Turn(role="client", text="Hi.")])
    out = normalize(d, NormalizeOptions(), st)
    assert out is not None and [t.role for t in out.turns] == ["counselor", "client"]
    assert (st.dropped, st.merged, st.rounds, st.trailing_client) == (1, 0, 0, 1)
    assert normalize(dlg([Turn(role="client", text="")], did="e"), NormalizeOptions(), st) is None
    assert st.skipped_dialogues == 1 and st.dialogues == 1 and st.by_source == {"test": 1}


def test_options_off_keep_everything():
    d = dlg([Turn(role="client", text="a"), Turn(role="client", text=""), Turn(role="client", text="b")])
    st = NormalizeStats()
    out = normalize(d, NormalizeOptions(merge_same_role=False, drop_empty=False), st)
    assert out is not None and [t.text for t in out.turns] == ["a", "", "b"]
    assert (st.merged, st.dropped, st.turns) == (0, 0, 3)


def test_merge_meta_rules():
    assert merge_meta({"a": [1], "s": "first"}, {"a": [2], "s": "second", "n": 5}) == {
        "a": [1, 2],
        "s": "first",
        "n": 5,
    }
    assert merge_meta({"a": "x"}, {"a": [2]}) == {"a": "x"}
