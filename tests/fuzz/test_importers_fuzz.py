"""Every importer (`mi-llm data import SOURCE`) on malformed files of its own format.

Each test starts from a small valid file of the source's format, breaks one place in it
(a value of the wrong type, a key removed, a line that is not JSON, a CSV cell or row
gone wrong, undecodable bytes) and runs the CLI in-process. Either the file still makes
sense and the import succeeds with a readable dialogues file, or the run fails with the
contract: exit 2, one line `FILE:LINE: what` (the line of the broken record when there is
one), no traceback, no output file.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mi_llm.corpus.importers import SOURCES
from mi_llm.corpus.schema import read_dialogues
from tests.fuzz.helpers import (
    FEW,
    FUZZ,
    bad_lines,
    dumps,
    error_line,
    json_values,
    located_at,
    mutated,
    record_exit,
    run_cli,
)

# Every registered source is fuzzed below (llamafactory is sharegpt's registry form).
FUZZED = {
    "cpsycound",
    "cpsycoune",
    "smile",
    "psydt",
    "annomi",
    "mibot",
    "sharegpt",
    "llamafactory",
    "openai",
    "dialogues",
}


def test_every_source_is_fuzzed():
    assert set(SOURCES) == FUZZED


def import_run(source: str, path: Path, out: Path):
    r = run_cli(
        ["data", "import", source, str(path), "-o", str(out), "--language", "en"]
        if source in ("sharegpt", "openai")
        else ["data", "import", source, str(path), "-o", str(out)]
    )
    record_exit(r)
    if r.code == 0:
        assert read_dialogues(out), "an import that succeeds writes dialogues the next stage reads"
    else:
        assert not out.exists(), f"{out} left behind by a failed import"
    return r


def check(r, file: Path, line: int | None) -> None:
    """A failed run names `file` and, when `line` is given, that line."""
    if r.code != 0:
        located_at(r, file, line)


def jsonl(records: list[Any]) -> str:
    return "".join(dumps(x) + "\n" for x in records)


def json_array_one_per_line(items: list[Any]) -> str:
    """A JSON array with item i on line i + 2 (to know where each item is)."""
    return "[\n" + ",\n".join(dumps(x) for x in items) + "\n]\n"


# ---------------------------------------------------------------- chat JSONL sources

SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "I smoke a pack a day."},
            {"from": "gpt", "value": "How do you feel about that?"},
        ],
        "system": "be kind",
    },
    {
        "id": "s-2",
        "messages": [
            {"role": "user", "content": "I want to sleep more."},
            {"role": "assistant", "content": "What gets in the way?"},
        ],
    },
    {
        "conversations": [
            {"from": "system", "value": "MI"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
        ]
    },
]
OPENAI = [
    {
        "messages": [
            {"role": "system", "content": "MI"},
            {"role": "user", "content": "I drink too much."},
            {"role": "assistant", "content": "Tell me more.", "weight": 1},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    },
    {"id": "o-3", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
]
PSYDT = [
    {
        "id": "p-a",
        "normalizedTag": "work",
        "messages": [
            {"role": "system", "content": "CBT"},
            {"role": "user", "content": "我很累"},
            {"role": "assistant", "content": "听起来很辛苦"},
        ],
    },
    {
        "id": "p-b",
        "normalizedTag": "family",
        "messages": [{"role": "user", "content": "My mother..."}, {"role": "assistant", "content": "Go on."}],
    },
    {"id": "p-c", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
]
DIALOGUES = [
    {
        "id": "d1",
        "source": "demo",
        "language": "en",
        "topic": "smoking",
        "style": "mi",
        "turns": [
            {"role": "client", "text": "I smoke."},
            {"role": "counselor", "text": "You smoke.", "codes": [{"text": "You smoke.", "code": "SR"}]},
        ],
        "miti_globals": {"cct": 3, "sst": 3, "partnership": 4, "empathy": 4},
    },
    {
        "id": "d2",
        "source": "demo",
        "language": "zh",
        "turns": [{"role": "client", "text": "我失眠。"}, {"role": "counselor", "text": "多久了？"}],
        "meta": {"x": [1]},
    },
    {"id": "d3", "source": "demo", "language": "en", "turns": [{"role": "counselor", "text": "Hi."}]},
]
CHAT_SOURCES = {"sharegpt": SHAREGPT, "openai": OPENAI, "psydt": PSYDT, "dialogues": DIALOGUES}


@pytest.mark.parametrize("source", sorted(CHAT_SOURCES))
@FUZZ
@given(data=st.data())
def test_chat_jsonl_record_broken(source, data):
    records = CHAT_SOURCES[source]
    k = data.draw(st.integers(0, len(records) - 1))
    lines = [dumps(r) for r in records]
    lines[k] = dumps(data.draw(mutated(records[k])))
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "data.jsonl"
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        check(r, f, k + 1)


@pytest.mark.parametrize("source", sorted(CHAT_SOURCES))
@FEW
@given(k=st.integers(1, 3), bad=bad_lines)
def test_chat_jsonl_line_not_an_object(source, k, bad):
    # line 1 stays valid: a first line opening with '[' makes the file a JSON array
    lines = [dumps(r) for r in CHAT_SOURCES[source]]
    lines.insert(k, bad)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "data.jsonl"
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        located_at(r, f, k + 1)


@pytest.mark.parametrize("source", ["sharegpt", "openai", "psydt"])
@FEW
@given(data=st.data())
def test_chat_json_array_item_broken(source, data):
    records = CHAT_SOURCES[source]
    k = data.draw(st.integers(0, len(records) - 1))
    items = list(records)
    items[k] = data.draw(mutated(records[k]))
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "data.json"
        f.write_text(json_array_one_per_line(items), encoding="utf-8")
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        check(r, f, k + 2)


@pytest.mark.parametrize("source", sorted(CHAT_SOURCES))
@FEW
@given(junk=st.binary(min_size=1, max_size=8).filter(lambda b: _not_utf8(b)))
def test_chat_jsonl_undecodable_bytes(source, junk):
    data = (dumps(CHAT_SOURCES[source][0]) + "\n").encode() + junk + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "data.jsonl"
        f.write_bytes(data)
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        located_at(r, f, first_bad_line(data))


def first_bad_line(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: e.start].count(b"\n") + 1
    raise AssertionError("valid UTF-8")


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_chat_role_object_is_located():
    """The fuzzing's first find: a role that is an object was a TypeError (unhashable)."""
    for source, records in CHAT_SOURCES.items():
        if source == "dialogues":
            continue
        rec = json.loads(json.dumps(records[1]))
        key = "messages" if "messages" in rec else "conversations"
        rec[key][0]["role" if "role" in rec[key][0] else "from"] = {"name": "user"}
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "data.jsonl"
            f.write_text(jsonl([records[0], rec]), encoding="utf-8")
            r = import_run(source, f, Path(tmp) / "out.jsonl")
            assert "should be a string" in located_at(r, f, 2), source


def test_chat_repeated_id_is_located():
    """Two records with one id made a dialogues file the next stage refuses."""
    for source in ("sharegpt", "openai"):
        rec = dict(CHAT_SOURCES[source][1], id="same")
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "data.jsonl"
            f.write_text(jsonl([rec, rec]), encoding="utf-8")
            r = import_run(source, f, Path(tmp) / "out.jsonl")
            assert "repeats" in located_at(r, f, 2), source


# ---------------------------------------------------------------- LLaMA-Factory dataset_info.json

INFO = {
    "mi_train": {
        "file_name": "mi_train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    },
    "mi_test": {"file_name": "mi_test.json", "formatting": "sharegpt"},
}


def _info_lines(info: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """dataset_info.json with each dataset on its own line; its line by name."""
    names = list(info)
    text = "{\n" + ",\n".join(f"{dumps(n)}: {dumps(info[n])}" for n in names) + "\n}\n"
    return text, {n: i + 2 for i, n in enumerate(names)}


@FUZZ
@given(st.data())
def test_llamafactory_dataset_info_broken(data):
    name = data.draw(st.sampled_from(sorted(INFO)))
    info = dict(INFO)
    info[name] = data.draw(mutated(INFO[name]))
    text, lines = _info_lines(info)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "lf"
        folder.mkdir()
        (folder / "mi_train.json").write_text(json_array_one_per_line(SHAREGPT[:1]), encoding="utf-8")
        (folder / "mi_test.json").write_text(json_array_one_per_line(SHAREGPT[1:]), encoding="utf-8")
        (folder / "dataset_info.json").write_text(text, encoding="utf-8")
        r = import_run("llamafactory", folder, Path(tmp) / "out.jsonl")
        if r.code != 0:
            msg = error_line(r)
            # the entry's own line, or a record of a data file its changed columns/tags misread
            if msg.startswith(str(folder / "dataset_info.json")):
                located_at(r, folder / "dataset_info.json", lines[name])
            else:
                assert msg.startswith((str(folder / "mi_train.json") + ":", str(folder / "mi_test.json") + ":")), msg


def test_llamafactory_dataset_info_wrong_types_are_located():
    """The fuzzing's finds: a non-string file_name, columns or tags not an object."""
    for bad in (
        {"file_name": 3},
        {"file_name": ["a.json"]},
        {"file_name": "mi_train.json", "formatting": "sharegpt", "columns": "x"},
        {"file_name": "mi_train.json", "formatting": "sharegpt", "tags": [1]},
        {"file_name": "mi_train.json", "formatting": "sharegpt", "tags": {"role_tag": ["from"]}},
    ):
        text, lines = _info_lines({"mi_test": INFO["mi_test"], "bad": bad})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "mi_train.json").write_text(json_array_one_per_line(SHAREGPT[:1]), encoding="utf-8")
            (folder / "mi_test.json").write_text(json_array_one_per_line(SHAREGPT[1:]), encoding="utf-8")
            (folder / "dataset_info.json").write_text(text, encoding="utf-8")
            r = import_run("llamafactory", folder, folder / "out.jsonl")
            assert "'bad'" in located_at(r, folder / "dataset_info.json", lines["bad"]), bad


@FEW
@given(bad_lines)
def test_llamafactory_dataset_info_not_an_object(bad):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "dataset_info.json").write_text(bad, encoding="utf-8")
        r = import_run("llamafactory", folder, folder / "out.jsonl")
        located_at(r, folder / "dataset_info.json")


# ---------------------------------------------------------------- JSON-array sources: cpsycoune, smile

CPSYCOUNE = [
    "求助者：我最近总是很焦虑。",
    "支持者：能多说说是什么让你焦虑吗？",
    "求助者：工作压力。",
    "支持者：听起来压力很大。",
]
SMILE = [
    {"role": "client", "content": "我失眠了。", "annotation": [{"text": "我失眠了。", "label": ""}]},
    {"role": "counselor", "content": "多久了？", "annotation": []},
    {"role": "client", "content": "一个月。"},
]


@pytest.mark.parametrize("source", ["cpsycoune", "smile"])
@FUZZ
@given(data=st.data())
def test_json_array_item_broken(source, data):
    items = list(CPSYCOUNE if source == "cpsycoune" else SMILE)
    k = data.draw(st.integers(0, len(items) - 1))
    items[k] = data.draw(mutated(items[k]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Career"
        folder.mkdir()
        f = folder / "1.json"
        f.write_text(json_array_one_per_line(items), encoding="utf-8")
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        check(r, f, k + 2)


@pytest.mark.parametrize("source", ["cpsycoune", "smile", "mibot"])
@FEW
@given(text=st.one_of(bad_lines, json_values.map(dumps)))
def test_json_file_garbage(source, text):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Career"
        folder.mkdir()
        f = folder / "1.json"
        f.write_text(text, encoding="utf-8")
        r = import_run(source, f, Path(tmp) / "out.jsonl")
        check(r, f, None)


# ---------------------------------------------------------------- CPsyCounD text files

_cpsy_line = st.one_of(
    st.sampled_from(
        [
            "来访者：我睡不好。",
            "心理咨询师：多久了？",
            "来访者（程女士）：嗯。",
            "心理咨询师1:好的",
            "妈妈：她不听话。",
            "（一段时间后）",
            "来访者：心理咨询师：",
            "",
            "   ",
            "1. 第一点",
            "A：我",
            "：",
            "来访者",
            "\ufeff",
        ]
    ),
    st.text(max_size=20).map(lambda s: s.replace("\r", "").replace("\n", "")),
)


@FUZZ
@given(st.lists(_cpsy_line, max_size=8), st.booleans())
def test_cpsycound_text(lines, crlf):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "case_1.txt"
        f.write_text(("\r\n" if crlf else "\n").join(lines), encoding="utf-8")
        r = import_run("cpsycound", f, Path(tmp) / "out.jsonl")
        check(r, f, None)


@FEW
@given(st.binary(min_size=1, max_size=12))
def test_cpsycound_bytes(junk):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "case_1.txt"
        f.write_bytes("来访者：你好\n\n".encode() + junk)
        r = import_run("cpsycound", f, Path(tmp) / "out.jsonl")
        check(r, f, None)


# ---------------------------------------------------------------- AnnoMI CSV

ANNOMI_HEADER = [
    "transcript_id",
    "mi_quality",
    "video_title",
    "video_url",
    "topic",
    "utterance_id",
    "interlocutor",
    "timestamp",
    "utterance_text",
    "main_therapist_behaviour",
    "client_talk_type",
]
ANNOMI_ROWS = [
    [
        "11",
        "high",
        "Demo",
        "https://example.org/v/11",
        "smoking",
        "0",
        "therapist",
        "00:00:02",
        "What brings you in?",
        "question",
        "n/a",
    ],
    [
        "11",
        "high",
        "Demo",
        "https://example.org/v/11",
        "smoking",
        "1",
        "client",
        "00:00:07",
        "My doctor wants me to quit.",
        "n/a",
        "neutral",
    ],
    [
        "12",
        "low",
        "Demo 2",
        "https://example.org/v/12",
        "alcohol",
        "0",
        "therapist",
        "00:00:01",
        "You have to stop.",
        "other",
        "n/a",
    ],
]
_cell = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", "n/a", "-1", "1.5", "therapist", "client", "high", "low", " 3 ", "1e3", '"', ","]),
)


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


@FUZZ
@given(st.data())
def test_annomi_csv_broken(data):
    rows = [list(r) for r in ANNOMI_ROWS]
    header = list(ANNOMI_HEADER)
    action = data.draw(st.sampled_from(["cell", "cell", "short row", "long row", "header", "raw line"]))
    k = data.draw(st.integers(0, len(rows) - 1))
    if action == "cell":
        rows[k][data.draw(st.integers(0, len(header) - 1))] = data.draw(_cell)
    elif action == "short row":
        del rows[k][data.draw(st.integers(0, len(header) - 1))]
    elif action == "long row":
        rows[k].append(data.draw(_cell))
    elif action == "header":
        del header[data.draw(st.integers(0, len(header) - 1))]
    text = _csv([header, *rows])
    if action == "raw line":
        lines = text.splitlines(keepends=True)
        lines.insert(
            k + 1, data.draw(st.text(max_size=30).map(lambda s: s.replace("\r", " ").replace("\n", " "))) + "\n"
        )
        text = "".join(lines)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "AnnoMI-simple.csv"
        f.write_text(text, encoding="utf-8")
        r = import_run("annomi", f, Path(tmp) / "out.jsonl")
        if r.code != 0:
            what = located_at(r, f, None)
            msg = error_line(r)
            # a bad row or header is located by its line
            assert msg.startswith(f"{f}:"), msg
            assert what


@FEW
@given(st.binary(min_size=1, max_size=12).filter(_not_utf8))
def test_annomi_undecodable(junk):
    data = _csv([ANNOMI_HEADER, *ANNOMI_ROWS]).encode() + junk + b"\n"
    bad_line = first_bad_line(data)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "AnnoMI-simple.csv"
        f.write_bytes(data)
        r = import_run("annomi", f, Path(tmp) / "out.jsonl")
        located_at(r, f, bad_line)


# ---------------------------------------------------------------- MIBot transcripts + data.csv

MIBOT = {
    "participant_id": "p1",
    "utterances": [
        {
            "speaker": "counsellor",
            "volley_number": 1,
            "utterance_number": 1,
            "text": "Hi there!",
            "auto_misc_label": "Other",
        },
        {"speaker": "client", "volley_number": 2, "utterance_number": 2, "text": "I smoke.", "auto_misc_label": "N"},
        {
            "speaker": "counsellor",
            "volley_number": 3,
            "utterance_number": 3,
            "text": "Tell me more.",
            "auto_misc_label": "Q",
        },
    ],
    "stats": {"n": 3},
}
MIBOT_CSV = [["ParticipantID", "Age", "Smoker"], ["p1", "34", "True"]]


def _mibot_text(obj: Any) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("utterances"), list):
        rest = {k: v for k, v in obj.items() if k != "utterances"}
        head = dumps(rest)[:-1] + (", " if rest else "")
        return head + '"utterances": [\n' + ",\n".join(dumps(u) for u in obj["utterances"]) + "\n]}\n"
    return dumps(obj) + "\n"


@FUZZ
@given(st.data())
def test_mibot_transcript_broken(data):
    obj = data.draw(mutated(MIBOT))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "mibot"
        (base / "transcripts").mkdir(parents=True)
        f = base / "transcripts" / "p1.json"
        f.write_text(_mibot_text(obj), encoding="utf-8")
        (base / "data.csv").write_text(_csv(MIBOT_CSV), encoding="utf-8")
        r = import_run("mibot", base, Path(tmp) / "out.jsonl")
        if r.code != 0:
            msg = error_line(r)
            utts = obj.get("utterances") if isinstance(obj, dict) else None
            if isinstance(utts, list) and utts != MIBOT["utterances"] and msg.startswith(f"{f}:"):
                # a broken utterance: the line it is on
                bad = [i for i, u in enumerate(utts) if u not in MIBOT["utterances"]]
                if bad and len(utts) == len(MIBOT["utterances"]):
                    located_at(r, f, bad[0] + 2)
                    return
            located_at(r, f, None)


@FUZZ
@given(st.data())
def test_mibot_survey_csv_broken(data):
    rows = [list(r) for r in MIBOT_CSV]
    action = data.draw(st.sampled_from(["cell", "short row", "long row", "raw"]))
    if action == "cell":
        i, j = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 2))
        rows[i][j] = data.draw(_cell)
    elif action == "short row":
        del rows[1][data.draw(st.integers(0, 2))]
    elif action == "long row":
        rows[1].append(data.draw(_cell))
    text = _csv(rows) if action != "raw" else data.draw(st.text(max_size=40))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "mibot"
        (base / "transcripts").mkdir(parents=True)
        (base / "transcripts" / "p1.json").write_text(_mibot_text(MIBOT), encoding="utf-8")
        f = base / "data.csv"
        f.write_text(text, encoding="utf-8")
        r = import_run("mibot", base, Path(tmp) / "out.jsonl")
        check(r, f, None)


def test_mibot_repeated_participant_is_an_error():
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name in ("a.json", "b.json"):
            (base / name).write_text(_mibot_text(MIBOT), encoding="utf-8")
        r = import_run("mibot", base, base / "out.jsonl")
        assert "p1" in located_at(r, base / "b.json")


def test_lone_surrogate_escape_is_located():
    """A \\ud800 escape is valid JSON but no character: writing the dialogues file failed."""
    for source, records in CHAT_SOURCES.items():
        # the escape inside the first string value of the second record
        line2 = json.dumps(records[1]).replace(': "', ': "\\ud800', 1)
        text = dumps(records[0]) + "\n" + line2 + "\n"
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "data.jsonl"
            f.write_text(text, encoding="utf-8")
            r = import_run(source, f, Path(tmp) / "out.jsonl")
            assert "surrogate" in located_at(r, f, 2), source
