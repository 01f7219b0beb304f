"""Source labels -> MITI 4.2.1 keys: the fixed mappings of issue 6, by hand and on small files."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from mi_llm.errors import InputError, MiLlmError
from mi_llm.miti.codebook import CODES
from mi_llm.miti.coders import labels as L

ANNOMI_COLS = [
    "mi_quality",
    "transcript_id",
    "topic",
    "utterance_id",
    "interlocutor",
    "utterance_text",
    "annotator_id",
    "reflection_subtype",
    "question_subtype",
    "therapist_input_subtype",
    "main_therapist_behaviour",
    "client_talk_type",
]


@pytest.mark.parametrize(
    "main, refl, ti, expected",
    [
        ("question", "n/a", "n/a", "Q"),
        ("question", "simple", "advice", "Q"),  # the main behaviour decides
        ("reflection", "simple", "n/a", "SR"),
        ("reflection", "complex", "n/a", "CR"),
        ("therapist_input", "n/a", "information", "GI"),
        ("therapist_input", "n/a", "advice", "Persuade"),
        ("therapist_input", "n/a", "options", "PwP"),
        ("therapist_input", "n/a", "negotiation", "Seek"),
        ("other", "n/a", "n/a", None),
    ],
)
def test_annomi_mapping(main, refl, ti, expected):
    assert L.annomi_code(main, refl, ti) == expected


def test_annomi_unmappable():
    assert L.annomi_code("reflection", "n/a", "n/a") is L._UNMAPPABLE
    assert L.annomi_code("therapist_input", None, None) is L._UNMAPPABLE
    assert L.annomi_code("", None, None) is L._UNMAPPABLE


def test_majority_and_ties():
    assert L.majority(["Q", "Q", "SR"]) == "Q"
    assert L.majority([None, None, "GI"]) is None
    assert L.majority(["Q", "SR"]) is L._UNMAPPABLE  # tie: dropped
    assert L.majority(["Q", "Q", "SR", "SR", "CR"]) is L._UNMAPPABLE
    assert L.majority(["CR", L._UNMAPPABLE, L._UNMAPPABLE]) == "CR"  # unusable votes do not count
    assert L.majority([L._UNMAPPABLE]) is L._UNMAPPABLE


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Closed Question", "Q"),
        ("Open Question", "Q"),
        ("Simple Reflection", "SR"),
        ("Complex Reflection", "CR"),
        ("Give Information", "GI"),
        ("Advise with Permission", "PwP"),
        ("Advise without Permission", "Persuade"),
        ("Direct", "Persuade"),
        ("Warn", "Persuade"),
        ("Affirm", "AF"),
        ("Emphasize Autonomy", "EA"),
        ("Confront", "Confront"),
        ("Support", None),
        ("Self-Disclose", None),
        ("Other", None),
    ],
)
def test_welivita_mapping(label, expected):
    assert L.welivita_code(label) == expected


def test_welivita_covers_its_15_labels():
    assert len(L.WELIVITA) == 15
    assert L.welivita_code("Something Else") is L._UNMAPPABLE


def test_mibot_mapping():
    assert L.mibot_code("Q") == "Q"
    assert L.mibot_code("MIIN") == "Persuade"
    assert L.mibot_code("Other") is None
    assert L.mibot_code("R") is L._UNMAPPABLE  # simple/complex unknown: dropped
    assert L.mibot_code("MICO") is L._UNMAPPABLE


def _annomi_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ANNOMI_COLS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "n/a") for c in ANNOMI_COLS})


def test_load_annomi_majority_context_and_ties(tmp_path):
    rows = [
        {
            "transcript_id": "7",
            "utterance_id": "0",
            "interlocutor": "client",
            "utterance_text": "I drink a lot.",
            "annotator_id": "1",
        },
        # three annotators: 2x complex reflection, 1x question -> CR
        *(
            {
                "transcript_id": "7",
                "utterance_id": "1",
                "interlocutor": "therapist",
                "utterance_text": "It worries you.",
                "annotator_id": a,
                "main_therapist_behaviour": b,
                "reflection_subtype": s,
            }
            for a, b, s in (("1", "reflection", "complex"), ("2", "reflection", "complex"), ("3", "question", "n/a"))
        ),
        {
            "transcript_id": "7",
            "utterance_id": "2",
            "interlocutor": "client",
            "utterance_text": "Yes.",
            "annotator_id": "1",
        },
        # two annotators disagree: dropped
        *(
            {
                "transcript_id": "7",
                "utterance_id": "3",
                "interlocutor": "therapist",
                "utterance_text": "Maybe cut down?",
                "annotator_id": a,
                "main_therapist_behaviour": b,
                "therapist_input_subtype": s,
            }
            for a, b, s in (("1", "therapist_input", "advice"), ("2", "question", "n/a"))
        ),
        {
            "transcript_id": "8",
            "utterance_id": "0",
            "interlocutor": "therapist",
            "utterance_text": "Hi there.",
            "annotator_id": "1",
            "main_therapist_behaviour": "other",
        },
    ]
    p = tmp_path / "annomi.csv"
    _annomi_csv(p, rows)
    ex = L.load_annomi(p)
    assert [(e.text, e.code, e.context, e.group) for e in ex] == [
        ("It worries you.", "CR", "I drink a lot.", "annomi-7"),
        ("Hi there.", None, "", "annomi-8"),
    ]
    # the conversation before each utterance, in its own transcript only
    assert [e.window for e in ex] == [(("client", "I drink a lot."),), ()]


def test_load_annomi_rejects_other_csv(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not an AnnoMI CSV"):
        L.load_annomi(p)
    with pytest.raises(MiLlmError, match="no such file"):
        L.load_annomi(tmp_path / "missing.csv")


def test_load_welivita(tmp_path):
    p = tmp_path / "cc.csv"
    col = "Union (without disambiguities)"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["dialog_id", "author", "text", col])
        w.writeheader()
        w.writerow({"dialog_id": "counsel_chat | 1", "author": "speaker", "text": "I feel worthless.", col: ""})
        w.writerow({"dialog_id": "counsel_chat | 1", "author": "listener", "text": "Warn text.", col: "Warn"})
        w.writerow({"dialog_id": "counsel_chat | 1", "author": "listener", "text": "No label.", col: ""})
        w.writerow({"dialog_id": "counsel_chat | 1", "author": "listener", "text": "Hugs.", col: "Support"})
    ex = L.load_welivita(p)
    assert [(e.text, e.code, e.context) for e in ex] == [
        ("Warn text.", "Persuade", "I feel worthless."),
        ("Hugs.", None, "I feel worthless."),
    ]


def test_load_mibot(tmp_path):
    (tmp_path / "transcripts").mkdir()
    utts = [
        {
            "speaker": "counsellor",
            "volley_number": 1,
            "utterance_number": 1,
            "text": "Hello!",
            "auto_misc_label": "Other",
        },
        {"speaker": "client", "volley_number": 2, "utterance_number": 2, "text": "Hi.", "auto_misc_label": "N"},
        {"speaker": "client", "volley_number": 2, "utterance_number": 3, "text": "I smoke.", "auto_misc_label": "N"},
        {
            "speaker": "counsellor",
            "volley_number": 3,
            "utterance_number": 4,
            "text": "You smoke.",
            "auto_misc_label": "R",
        },
        {"speaker": "counsellor", "volley_number": 3, "utterance_number": 5, "text": "Why?", "auto_misc_label": "Q"},
        {
            "speaker": "counsellor",
            "volley_number": 3,
            "utterance_number": 6,
            "text": "Just quit.",
            "auto_misc_label": "MIIN",
        },
    ]
    (tmp_path / "transcripts" / "abc.json").write_text(json.dumps({"utterances": utts}))
    ex = L.load_mibot(tmp_path)
    assert [(e.text, e.code, e.context) for e in ex] == [
        ("Hello!", None, ""),
        ("Why?", "Q", "Hi. I smoke."),
        ("Just quit.", "Persuade", "Hi. I smoke."),
    ]


def test_demo_examples_cover_every_code_in_both_languages():
    ex = L.demo_examples()
    for lang in ("zh", "en"):
        codes = Counter(e.code for e in ex if e.language == lang)
        assert set(CODES) <= set(codes), f"{lang}: {codes}"
    assert all(e.group.startswith("demo-") for e in ex)


def test_parse_sources(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    assert L.parse_sources([f"annomi={tmp_path}/a.csv", f"MIBOT={tmp_path}"]) == [
        ("annomi", tmp_path / "a.csv"),
        ("mibot", tmp_path),
    ]
    with pytest.raises(MiLlmError, match="no such file"):
        L.parse_sources([f"welivita={tmp_path}/none.csv"])
    with pytest.raises(MiLlmError, match="KIND=PATH"):
        L.parse_sources(["annomi"])
    with pytest.raises(MiLlmError, match="unknown source"):
        L.parse_sources(["nope=/x"])


def test_parse_weights():
    assert L.parse_weights(["welivita=1", "Mine=0", " demo = 2.5"]) == {"welivita": 1.0, "Mine": 0.0, "demo": 2.5}
    for bad in ("welivita", "welivita=", "welivita=-0.1", "welivita=nan", "welivita=inf", "welivita=x", "=1"):
        with pytest.raises(MiLlmError, match="expected SOURCE=W"):
            L.parse_weights([bad])


@pytest.mark.integration
def test_shared_data_counts(shared_data):
    an = L.load_annomi(shared_data / "annomi" / "AnnoMI-full.csv")
    c = Counter(e.code for e in an)
    assert len({e.group for e in an}) == 106
    assert 3900 < len(an) < 4019  # 4019 therapist utterances; ties and unmappable ones dropped
    assert c["Q"] > 1000 and c["SR"] > 400 and c["CR"] > 400 and c[None] > 1000
    assert set(c) <= {*CODES, None}
    wv = L.load_welivita(shared_data / "welivita" / "CC_Augmented.csv")
    assert len(wv) > 2500 and Counter(e.code for e in wv)["AF"] > 100
    mb = L.load_mibot(shared_data / "mibot")
    assert set(Counter(e.code for e in mb)) == {"Q", "Persuade", None}


def test_windows_hold_the_conversation_before_each_utterance():
    """Demo dialogues: the window holds the earlier turns and the same turn's earlier utterances,
    oldest first, at most WINDOW of them; the counselor's own previous turn is in it."""
    from mi_llm.corpus.schema import Dialogue

    turns = [
        {
            "role": "counselor",
            "text": "Hello. What brings you?",
            "codes": [{"text": "Hello.", "code": None}, {"text": "What brings you?", "code": "Q"}],
        }
    ]
    for i in range(8):
        turns.append({"role": "client", "text": f"client {i}"})
        turns.append(
            {"role": "counselor", "text": f"counselor {i}.", "codes": [{"text": f"counselor {i}.", "code": "SR"}]}
        )
    d = Dialogue.model_validate({"id": "d1", "source": "demo", "language": "en", "style": "mi", "turns": turns})
    ex = L.examples_from_dialogues([d])
    assert ex[0].window == () and ex[1].window == (("counselor", "Hello."),)
    assert ex[2].window == (("counselor", "Hello."), ("counselor", "What brings you?"), ("client", "client 0"))
    last = ex[-1]
    assert len(last.window) == L.WINDOW and last.window[-1] == ("client", "client 7")
    assert last.window[-2] == ("counselor", "counselor 6.")  # the counselor's own previous turn
    assert last.context == "client 7"
