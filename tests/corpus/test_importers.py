"""Importers: small fixtures written for the project, malformed input, CLI behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mi_llm.corpus.importers import SOURCES, get_importer, import_corpus
from mi_llm.corpus.language import detect_language
from mi_llm.corpus.normalize import NormalizeOptions
from mi_llm.corpus.schema import read_dialogues, write_dialogues
from mi_llm.errors import InputError, MiLlmError

FIXTURES = Path(__file__).parent / "fixtures"


def raw(source: str, path: Path):
    return list(get_importer(source)(path))


def by_id(dialogues):
    return {d.id: d for d in dialogues}


def roles(d):
    return [t.role for t in d.turns]


def located(err: pytest.ExceptionInfo, path: Path, line: int | None) -> str:
    """Assert the error names FILE:LINE (or FILE) and return its message."""
    e = err.value
    assert isinstance(e, InputError), type(e)
    assert Path(e.path) == path and e.line == line, str(e)
    assert str(e).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    return e.message


def test_every_registered_source_has_an_importer():
    for source in SOURCES:
        assert callable(get_importer(source))


# ---------------------------------------------------------------- cpsycound


def test_cpsycound_turns_tags_and_quirks():
    ds = raw("cpsycound", FIXTURES / "cpsycound")
    assert [d.id for d in ds] == ["cpsycound-case_2", "cpsycound-case_10"]  # natural order
    d = ds[0]
    assert d.source == "cpsycound" and d.language == "zh" and d.style == "raw" and d.topic is None
    assert roles(d) == [
        "client",
        "counselor",
        "client",
        "counselor",
        "counselor",
        "client",
        "client",
        "counselor",
        "client",
    ]
    # continuation lines of a numbered list stay in the turn, with their line breaks
    assert (
        d.turns[3].text
        == "听起来脑子停不下来。我们可以试几个办法：\n1. 睡前一小时放下手机。\n2. 把担心的事写在本子上。"
    )
    # the bracketed narration is not text but kept in the meta of the turn before it
    assert d.turns[3].meta["stage_directions"] == ["（练习过程略）"]
    assert all("练习过程略" not in t.text for t in d.turns)
    assert d.turns[4].text == "现在感觉怎么样？"  # half-width colon
    assert d.turns[5].meta["speakers"] == ["来访者（小王）"] and d.turns[5].text == "好一些了，我愿意回去试试。"
    assert d.turns[6].meta["speakers"] == ["妈妈"] and d.turns[6].role == "client"
    assert d.turns[8].text == ""  # a bare trailing tag: kept raw, dropped by normalisation
    assert ds[1].turns[-1].text == "开会时他们总打断我。\n我觉得自己不被尊重。"


def test_cpsycound_normalised_counts():
    ds, st = import_corpus("cpsycound", FIXTURES / "cpsycound")
    assert (st.dialogues, st.merged, st.dropped, st.trailing_client) == (2, 2, 1, 1)
    d = by_id(ds)["cpsycound-case_2"]
    assert roles(d) == ["client", "counselor"] * 3
    assert d.turns[4].meta["speakers"] == ["来访者（小王）", "妈妈"]  # merged meta lists
    assert d.turns[4].text == "好一些了，我愿意回去试试。我也会提醒他早点休息。"  # zh joiner: ""


def test_cpsycound_tag_right_after_tag(tmp_path: Path):
    f = tmp_path / "case_3.txt"
    f.write_text("来访者：我说完了。\n\n心理咨询师：你能接受吗？\n\n来访者：心理咨询师：很好。\n", encoding="utf-8")
    (d,) = raw("cpsycound", f)
    assert [(t.role, t.text) for t in d.turns] == [
        ("client", "我说完了。"), ("counselor", "你能接受吗？"), ("client", ""), ("counselor", "很好。"),
    ]  # fmt: skip
    ds, st = import_corpus("cpsycound", f)
    assert st.dropped == 1 and st.merged == 1 and ds[0].turns[-1].text == "你能接受吗？很好。"


def test_cpsycound_text_before_first_tag(tmp_path: Path):
    f = tmp_path / "case_5.txt"
    f.write_text("\n（开场白）\n你好\n来访者：嗯\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("cpsycound", f)
    assert "text before the first speaker tag" in located(err, f, 3)


def test_cpsycound_empty_and_undecodable(tmp_path: Path):
    empty = tmp_path / "case_1.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("cpsycound", empty)
    assert "no turns found" in located(err, empty, None)
    bad = tmp_path / "case_2.txt"
    bad.write_bytes("来访者：你好\n".encode() + b"\xff\xfe\n")
    with pytest.raises(InputError) as err:
        raw("cpsycound", bad)
    assert "not valid UTF-8" in located(err, bad, 2)


def test_folder_without_case_files(tmp_path: Path):
    with pytest.raises(MiLlmError, match="no CPsyCounD case_N.txt files found"):
        raw("cpsycound", tmp_path)


# ---------------------------------------------------------------- cpsycoune


def test_cpsycoune_topics_from_folders():
    ds = raw("cpsycoune", FIXTURES / "cpsycoune")
    assert [(d.id, d.topic) for d in ds] == [("cpsycoune-career-1", "Career"), ("cpsycoune-sex-2", "Sex")]
    assert roles(ds[0]) == ["client", "counselor", "client", "counselor"]
    assert ds[0].turns[0].text == "我快毕业了，不知道该找什么工作。"
    one_topic = raw("cpsycoune", FIXTURES / "cpsycoune" / "Sex")
    assert [d.topic for d in one_topic] == ["Sex"]


def test_cpsycoune_unknown_tag_and_bad_items(tmp_path: Path):
    topic = tmp_path / "Career"
    topic.mkdir()
    f = topic / "1.json"
    f.write_text('[\n  "求助者：你好",\n  "来访者：这不是本数据集的标签"\n]\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("cpsycoune", f)
    assert "unknown speaker tag '来访者'" in located(err, f, 3)
    f.write_text('[\n  "求助者：你好",\n  42\n]\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("cpsycoune", f)
    assert "got int" in located(err, f, 3)
    f.write_text('[\n  "求助者：你好",\n  "支持者：嗯"\n  "求助者：漏了逗号"\n]\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("cpsycoune", f)
    assert "expected ',' or ']'" in located(err, f, 4)


# ---------------------------------------------------------------- smile


def test_smile_roles_labels_and_client_only_dialogue():
    ds = by_id(raw("smile", FIXTURES / "smile"))
    assert set(ds) == {"smile-7", "smile-12"}
    d = ds["smile-7"]
    assert roles(d) == ["client", "counselor", "client", "client"]
    assert d.turns[1].meta["annotation"] == [{"sentence": "说明你在乎这次考试。", "label": "affirm"}]
    assert "annotation" not in d.turns[0].meta  # empty labels are not kept
    assert roles(ds["smile-12"]) == ["client"]  # no counselor turn: imported, gives no round
    normalised, st = import_corpus("smile", FIXTURES / "smile")
    assert st.rounds == 1 and st.merged == 1 and st.trailing_client == 2


def test_smile_malformed(tmp_path: Path):
    f = tmp_path / "3.json"
    f.write_text(
        '[\n {"role": "client", "content": "你好"},\n {"role": "helper", "content": "嗯"}\n]', encoding="utf-8"
    )
    with pytest.raises(InputError) as err:
        raw("smile", f)
    assert "unknown role 'helper'" in located(err, f, 3)
    f.write_text('[\n {"role": "client"}\n]', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("smile", f)
    assert "missing key 'content'" in located(err, f, 2)
    f.write_text('[\n {"role": "client", "content": "你好"},,\n]', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("smile", f)
    assert "invalid JSON" in located(err, f, 2)


# ---------------------------------------------------------------- psydt


def test_psydt_json_and_jsonl():
    ds = by_id(raw("psydt", FIXTURES / "psydt"))
    assert set(ds) == {"psydt-101", "psydt-102", "psydt-a7", "psydt-a8"}
    d = ds["psydt-101"]
    assert d.topic == "学业压力" and d.language == "zh" and d.meta["system"] == "你是一位运用认知行为疗法的心理咨询师。"
    assert roles(d) == ["client", "counselor", "client", "counselor"]
    assert ds["psydt-a8"].language == "en" and ds["psydt-a8"].topic is None and "system" not in ds["psydt-a8"].meta
    assert roles(ds["psydt-102"])[-1] == "client"
    only_jsonl = raw("psydt", FIXTURES / "psydt" / "psydt.jsonl")
    assert [d.id for d in only_jsonl] == ["psydt-a7", "psydt-a8"]


def test_psydt_malformed(tmp_path: Path):
    f = tmp_path / "p.jsonl"
    good = '{"id": 1, "normalizedTag": "x", "messages": [{"role": "user", "content": "a"}]}'
    f.write_text(good + "\n" + '{"id": 2, "messages": [{"role": "tool", "content": "b"}]}\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("psydt", f)
    assert "messages[0]: unknown role 'tool'" in located(err, f, 2)
    f.write_text(good + "\n\n" + good + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("psydt", f)
    assert "dialogue id 'psydt-1' repeats p.jsonl:1" in located(err, f, 3)
    f.write_text('{"id": 3, "normalizedTag": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("psydt", f)
    assert "missing key 'messages'" in located(err, f, 1)
    f.write_text(good + "\n{oops\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("psydt", f)
    assert "invalid JSON" in located(err, f, 2)


# ---------------------------------------------------------------- annomi


def test_annomi_simple_and_full_agree_on_text():
    full = raw("annomi", FIXTURES / "annomi" / "AnnoMI-full.csv")
    simple = raw("annomi", FIXTURES / "annomi" / "AnnoMI-simple.csv")
    assert [d.id for d in full] == [d.id for d in simple] == ["annomi-3", "annomi-11"]
    for a, b in zip(full, simple):
        assert [(t.role, t.text) for t in a.turns] == [(t.role, t.text) for t in b.turns]
    assert raw("annomi", FIXTURES / "annomi")[0].meta["annotation_file"] == "full"  # folder: full preferred


def test_annomi_full_keeps_every_annotator_per_utterance():
    ds = by_id(raw("annomi", FIXTURES / "annomi" / "AnnoMI-full.csv"))
    d = ds["annomi-11"]
    assert d.style == "mi" and d.topic == "smoking cessation" and d.meta["mi_quality"] == "high"
    assert d.meta["video_title"] == 'Demo: "Quit" talk, part 1'
    u0 = d.turns[0].meta["utterances"]
    assert len(u0) == 1 and u0[0]["utterance_id"] == 0 and u0[0]["timestamp"] == "00:00:02"
    assert u0[0]["annotations"] == [
        {"annotator_id": 2, "main_therapist_behaviour": "question", "question_subtype": "open"},
        {"annotator_id": 5, "main_therapist_behaviour": "other"},
    ]
    assert d.turns[1].meta["utterances"][0]["annotations"] == [
        {"annotator_id": 2, "client_talk_type": "neutral"},
        {"annotator_id": 5, "client_talk_type": "change"},
    ]
    assert d.turns[3].meta["utterances"][0]["annotations"][0]["reflection_subtype"] == "complex"
    low = ds["annomi-3"]
    assert low.style == "raw" and [t.text for t in low.turns][:2] == [
        "Let's get started.",
        "You need to stop drinking, it's bad for your liver.",
    ]  # utterance_id order, not file order
    assert low.turns[1].meta["utterances"][0]["annotations"][0]["therapist_input_subtype"] == "advice"


def test_annomi_merged_turns_keep_each_utterance():
    ds, st = import_corpus("annomi", FIXTURES / "annomi" / "AnnoMI-simple.csv")
    assert st.merged == 2
    d = by_id(ds)["annomi-11"]
    merged = d.turns[1]
    assert merged.text == "My doctor wants me to quit smoking. Honestly, I'm not sure I'm ready."
    assert [(u["utterance_id"], u["text"], u["annotations"]) for u in merged.meta["utterances"]] == [
        (1, "My doctor wants me to quit smoking.", [{"client_talk_type": "neutral"}]),
        (2, "Honestly, I'm not sure I'm ready.", [{"client_talk_type": "sustain"}]),
    ]


def test_annomi_malformed(tmp_path: Path):
    src = (FIXTURES / "annomi" / "AnnoMI-simple.csv").read_text(encoding="utf-8").splitlines()
    f = tmp_path / "AnnoMI-simple.csv"
    f.write_text("\n".join([src[0].replace(",utterance_text", ",text")] + src[1:]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("annomi", f)
    assert "missing column(s) utterance_text" in located(err, f, 1)
    f.write_text("\n".join(src[:3] + [src[3].replace(",client,", ",coach,")] + src[4:]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("annomi", f)
    assert "unknown interlocutor 'coach'" in located(err, f, 4)
    f.write_text("\n".join(src[:5] + ["11,high,short row"] + src[5:]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        raw("annomi", f)
    assert "3 fields, the header has 11" in located(err, f, 6)
    f.write_text(
        "\n".join(src[:2] + [src[2].replace("smoking cessation ,1,", "smoking cessation ,one,")] + src[3:]) + "\n"
    )
    with pytest.raises(InputError) as err:
        raw("annomi", f)
    assert "utterance_id should be an integer" in located(err, f, 3)


# ---------------------------------------------------------------- mibot


def test_mibot_volleys_labels_and_survey():
    (d,) = raw("mibot", FIXTURES / "mibot")
    assert d.id == "mibot-p1" and d.style == "mi" and d.language == "en" and d.topic == "smoking cessation"
    assert roles(d) == ["counselor", "client", "counselor", "client"]
    assert d.turns[0].text == "Hi there! What brings you here today?"
    assert [(u["utterance_number"], u["auto_misc_label"]) for u in d.turns[1].meta["utterances"]] == [
        (32, "N"),
        (33, "C"),
    ]
    assert "auto_misc_explanation" not in d.turns[0].meta["utterances"][0]
    assert d.meta["survey"] == {
        "DailyNum": 20, "PreConvoQuitAttempt": False, "PreRulerConfidence": 3, "PostRulerConfidence": 5,
        "FeedbackQ1": "calm, kind, curious", "AutoMISC_%MIC": 0.95,
    }  # fmt: skip
    assert raw("mibot", FIXTURES / "mibot" / "transcripts" / "p1.json")[0].meta["survey"]["DailyNum"] == 20
    ds, st = import_corpus("mibot", FIXTURES / "mibot")
    assert st.dropped == 1 and roles(ds[0]) == ["counselor", "client", "counselor"]


def test_mibot_malformed(tmp_path: Path):
    f = tmp_path / "x.json"
    obj = json.loads((FIXTURES / "mibot" / "transcripts" / "p1.json").read_text())
    obj["utterances"][2]["speaker"] = "bot"
    f.write_text(json.dumps(obj, indent=2))
    with pytest.raises(InputError) as err:
        raw("mibot", f)
    msg = located(err, f, 22)  # the line where utterances[2] starts
    assert msg.startswith("utterances[2]: unknown speaker 'bot'")
    f.write_text('{"participant_id": "x", "utterances": [}')
    with pytest.raises(InputError) as err:
        raw("mibot", f)
    assert "invalid JSON" in located(err, f, 1)


# ---------------------------------------------------------------- sharegpt / llamafactory / openai


def test_sharegpt_both_shapes_and_system():
    ds = by_id(raw("sharegpt", FIXTURES / "sharegpt"))
    assert set(ds) == {"sharegpt-chats-1", "s-2", "sharegpt-messages-1"}
    a = ds["sharegpt-chats-1"]
    assert (
        a.language == "en"
        and a.meta["system"] == "You are an MI counselor."
        and roles(a) == ["client", "counselor", "client"]
    )
    b = ds["s-2"]
    assert b.language == "zh" and b.topic == "sleep" and b.meta["system"] == "你是一位动机式访谈咨询师。"
    assert ds["sharegpt-messages-1"].language == "zh" and roles(ds["sharegpt-messages-1"]) == ["client", "counselor"]


def test_llamafactory_folder_with_dataset_info_tags():
    (d,) = raw("llamafactory", FIXTURES / "llamafactory")
    assert [(t.role, t.text) for t in d.turns] == [
        ("client", "I want to drink less soda."),
        ("counselor", "You have a goal in mind."),
    ]
    assert d.meta["system"] == "Be brief.\nstay warm"


def test_sharegpt_malformed(tmp_path: Path):
    f = tmp_path / "c.json"
    f.write_text('[\n{"conversations": [{"from": "human", "value": "hi"}]},\n'
                 '{"conversations": [{"from": "observation", "value": "x"}]}\n]')  # fmt: skip
    with pytest.raises(InputError) as err:
        raw("sharegpt", f)
    assert "message 0: unknown speaker 'observation'" in located(err, f, 3)
    f.write_text('[{"dialog": []}]')
    with pytest.raises(InputError) as err:
        raw("sharegpt", f)
    assert "missing key 'conversations'" in located(err, f, 1)
    info = tmp_path / "lf"
    info.mkdir()
    (info / "dataset_info.json").write_text('{"a": {"file_name": "a.json"}}')
    with pytest.raises(MiLlmError, match="not in sharegpt format"):
        raw("llamafactory", info)


def test_openai_messages():
    ds = by_id(raw("openai", FIXTURES / "openai"))
    a = ds["openai-train-1"]
    assert [t.text for t in a.turns] == [
        "I forget my pills.", "Remembering them is tricky.", "Especially on weekends.", "Weekends break your routine.",
    ]  # fmt: skip
    assert a.turns[1].meta == {"weight": 0} and a.meta["system"] == "You are an MI counselor."
    assert ds["o-2"].language == "zh" and ds["o-2"].meta["system"] == "Be kind."


def test_openai_malformed(tmp_path: Path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "a"}]}\n'
                 '{"messages": [{"role": "tool", "content": "b"}]}\n')  # fmt: skip
    with pytest.raises(InputError) as err:
        raw("openai", f)
    assert "unknown speaker 'tool'" in located(err, f, 2)
    f.write_text('{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}\n')
    with pytest.raises(InputError) as err:
        raw("openai", f)
    assert "only text content parts" in located(err, f, 1)
    f.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(InputError) as err:
        raw("openai", f)
    assert "missing key 'messages'" in located(err, f, 1)


def test_language_detection():
    assert detect_language(["我最近睡得不好。"]) == "zh"
    assert detect_language(["I sleep badly these days."]) == "en"
    assert detect_language(["OK，我明白你的意思了，谢谢"]) == "zh"
    assert detect_language(["I read 《红楼梦》 sometimes, a classic novel that my teacher recommended."]) == "en"


# ---------------------------------------------------------------- dialogues and round trips


def test_dialogues_reimport_and_duplicate_ids(tmp_path: Path):
    ds, _ = import_corpus(
        "cpsycound", FIXTURES / "cpsycound", NormalizeOptions(merge_same_role=False, drop_empty=False)
    )
    f = tmp_path / "a.jsonl"
    write_dialogues(f, ds)
    again, st = import_corpus("dialogues", f)
    assert [d.id for d in again] == [d.id for d in ds] and st.merged == 2 and st.dropped == 1
    (tmp_path / "b.jsonl").write_text(f.read_text().splitlines()[0] + "\n")
    with pytest.raises(MiLlmError, match="also appears in"):
        import_corpus("dialogues", tmp_path)


def test_build_exports_import_back(tmp_path: Path):
    from mi_llm.build.stage import build

    ds, _ = import_corpus("psydt", FIXTURES / "psydt")
    write_dialogues(tmp_path / "d.jsonl", ds)
    summary = build([tmp_path / "d.jsonl"], tmp_path / "out", train=3, test=1, seed=1)
    samples = summary["train"]["samples"] + summary["test"]["samples"]
    lf, _ = import_corpus("llamafactory", tmp_path / "out" / "llamafactory")
    oa, _ = import_corpus("openai", tmp_path / "out" / "openai")
    assert len(lf) == len(oa) == samples
    assert all(d.meta["system"] and d.turns[-1].role == "counselor" for d in lf + oa)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True)


def test_cli_import_reports_counts(tmp_path: Path):
    out = tmp_path / "d.jsonl"
    r = run_cli("data", "import", "annomi", str(FIXTURES / "annomi"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "merged" in r.stderr and len(read_dialogues(out)) == 2


def test_cli_malformed_input_one_line_exit_2_no_output(tmp_path: Path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [}\n')
    out = tmp_path / "d.jsonl"
    r = run_cli("data", "import", "openai", str(f), "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"{f}:2: invalid JSON: Expecting value (column 15)"]
    assert not out.exists()


# ---------------------------------------------------------------- the real data (../shared/data)


def _import_counted(source: str, path: Path):
    """(raw dialogues, normalised dialogues, stats), as import_corpus computes them."""
    from mi_llm.corpus.normalize import NormalizeStats, normalize

    raw_ds = raw(source, path)
    stats = NormalizeStats()
    opts = NormalizeOptions()
    out = [n for n in (normalize(d, opts, stats) for d in raw_ds) if n is not None]
    return raw_ds, out, stats


def _check_invariants(raw_ds, out, st) -> None:
    assert len({d.id for d in out}) == len(out) == st.dialogues
    assert st.merged + st.dropped == sum(len(d.turns) for d in raw_ds) - st.turns
    assert st.turns == sum(len(d.turns) for d in out)
    assert st.rounds == sum(len(d.rounds()) for d in out)
    assert st.trailing_client == sum(d.turns[-1].role == "client" for d in out)
    for d in out:
        assert all(a.role != b.role for a, b in zip(d.turns, d.turns[1:])), d.id
        assert all(t.text.strip() for t in d.turns), d.id


@pytest.mark.integration
def test_real_cpsycound(shared_data: Path):
    raw_ds, out, st = _import_counted("cpsycound", shared_data / "cpsycound" / "CPsyCounD")
    assert st.dialogues == 3084 and st.skipped_dialogues == 0
    _check_invariants(raw_ds, out, st)
    assert st.merged > 0 and st.trailing_client > 0
    assert all(d.turns[0].role == "client" for d in out)
    for d in out:  # every speaker tag and bracketed narration line was consumed
        for t in d.turns:
            lines = t.text.split("\n")
            assert not any(x.startswith(("来访者：", "心理咨询师：", "来访者:", "心理咨询师:")) for x in lines), d.id
            # (a turn may *be* an action, 来访者：（画了一幅画…）, but narration never follows text)
            assert not any(x.startswith("（") and x.endswith("）") for x in lines[1:]), d.id
    assert sum(len(t.meta.get("stage_directions", [])) for d in out for t in d.turns) > 0


@pytest.mark.integration
def test_real_cpsycound_cli_reports_3084(shared_data: Path, tmp_path: Path):
    out = tmp_path / "d.jsonl"
    r = run_cli("data", "import", "cpsycound", str(shared_data / "cpsycound" / "CPsyCounD"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "3,084" in r.stderr and len(read_dialogues(out)) == 3084


@pytest.mark.integration
def test_real_cpsycoune(shared_data: Path):
    raw_ds, out, st = _import_counted("cpsycoune", shared_data / "cpsycound" / "CPsyCounE")
    assert st.dialogues == 45
    _check_invariants(raw_ds, out, st)
    topics = {d.topic for d in out}
    assert len(topics) == 9 and all(sum(d.topic == t for d in out) == 5 for t in topics)


@pytest.mark.integration
def test_real_smile(shared_data: Path):
    folder = shared_data / "smile" / "data"
    raw_ds, out, st = _import_counted("smile", folder)
    assert st.dialogues == 2000
    _check_invariants(raw_ds, out, st)
    no_counselor = sum(
        all(u["role"] != "counselor" for u in json.loads(f.read_text(encoding="utf-8"))) for f in folder.glob("*.json")
    )
    assert no_counselor > 0  # the README's quirk: imported, they give no sample
    assert sum(all(t.role != "counselor" for t in d.turns) for d in out) == no_counselor


@pytest.mark.integration
def test_real_annomi_simple_and_full(shared_data: Path):
    import csv
    from collections import Counter

    results = {}
    for name in ("AnnoMI-simple.csv", "AnnoMI-full.csv"):
        path = shared_data / "annomi" / name
        raw_ds, out, st = _import_counted("annomi", path)
        assert st.dialogues == 106
        _check_invariants(raw_ds, out, st)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        per_utt = Counter((r["transcript_id"], r["utterance_id"]) for r in rows)
        quality = {r["transcript_id"]: r["mi_quality"] for r in rows}
        utts = [u for d in out for t in d.turns for u in t.meta["utterances"]]
        assert len(utts) == len(per_utt)  # merging lost no utterance
        assert sum(len(u["annotations"]) for u in utts) == len(rows)  # nor any annotator's labels
        assert sum(len(u["annotations"]) > 1 for u in utts) == sum(n > 1 for n in per_utt.values())
        assert Counter(d.style for d in out) == Counter("mi" if q == "high" else "raw" for q in quality.values())
        results[name] = out
    a, b = results.values()  # the two files hold the same transcripts and texts
    assert [(d.id, [t.text for t in d.turns]) for d in a] == [(d.id, [t.text for t in d.turns]) for d in b]
    full = results["AnnoMI-full.csv"]
    assert sum(len(u["annotations"]) > 1 for d in full for t in d.turns for u in t.meta["utterances"]) > 0


@pytest.mark.integration
def test_real_mibot(shared_data: Path):
    raw_ds, out, st = _import_counted("mibot", shared_data / "mibot")
    assert st.dialogues == 106
    _check_invariants(raw_ds, out, st)
    files = [json.loads(f.read_text(encoding="utf-8")) for f in (shared_data / "mibot" / "transcripts").glob("*.json")]
    volleys = sum(len({u["volley_number"] for u in f["utterances"]}) for f in files)
    assert sum(len(d.turns) for d in raw_ds) == volleys
    labelled = [u for d in raw_ds for t in d.turns for u in t.meta["utterances"]]
    assert len(labelled) == sum(len(f["utterances"]) for f in files) and all(u["auto_misc_label"] for u in labelled)
    assert all("survey" in d.meta for d in out)


def test_import_source_is_the_one_path_for_demo_and_the_language_override(tmp_path):
    """mi_llm.corpus.importers.import_source: the pipeline's sources and `mi-llm data import`."""
    from mi_llm.corpus.importers import import_source, source_files
    from mi_llm.resources import demo_dialogues, demo_files

    got, stats = import_source("demo", None, language="en", style="raw")
    assert [d.id for d in got] == [d.id for d in demo_dialogues("en", "raw")]
    assert stats.dialogues == len(got) and {d.language for d in got} == {"en"}
    assert source_files("demo", None, "zh", "mi") == demo_files("zh", "mi")
    src = tmp_path / "d.jsonl"
    write_dialogues(src, demo_dialogues("zh", "raw")[:2])
    assert {d.language for d in import_source("dialogues", src)[0]} == {"zh"}
    assert {d.language for d in import_source("dialogues", src, language="en")[0]} == {"en"}
    assert source_files("dialogues", src) == [src]
    with pytest.raises(MiLlmError, match="source 'annomi' needs a path"):
        import_source("annomi", None)
