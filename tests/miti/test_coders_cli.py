"""`mi-llm miti code | code-utterances | train-coder`: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.miti.codebook import CODES
from mi_llm.resources import demo_dialogues, demo_files
from tests.miti.test_coders_llm import FakeOpenAI, _is_globals, _n_utterances


def run(*args, env=None):
    """The real command line in a subprocess, as users see it."""
    return subprocess.run(
        [sys.executable, "-m", "mi_llm", "miti", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture(scope="module")
def coder_dir(tmp_path_factory):
    """A quick coder trained by the CLI on the demo corpus only."""
    out = tmp_path_factory.mktemp("coder") / "c"
    r = run("train-coder", "-o", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert "trained on" in r.stderr and (out / "coder.json").is_file()
    return out


def _one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_code_dialogues(coder_dir, tmp_path):
    src = demo_files("en", "raw")[0]
    out = tmp_path / "coded.jsonl"
    r = run("code", str(src), "--coder", str(coder_dir), "-o", str(out), "--resegment")
    assert r.returncode == 0, r.stderr
    coded = read_dialogues(out)  # validates: utterances add up to turns, codes are keys
    assert len(coded) == len(read_dialogues(src))
    assert all(d.miti_globals is not None for d in coded)
    assert all(t.codes for d in coded for t in d.turns if t.role == "counselor")
    assert all(t.talk for d in coded for t in d.turns if t.role == "client" and t.text.strip())  # client talk too
    assert "coded" in r.stderr and "client turns:" in r.stderr and "wrote" in r.stderr


def test_code_utterances(coder_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [
        {"id": 1, "text": "What brings you in today?", "language": "en"},
        {"id": "b", "text": "你觉得戒烟对你意味着什么？", "context": "我老婆让我来的。", "note": "kept"},
        {"id": "c", "text": "What would help?", "context": "I don't know.", "history": "What worries you?"},
    ]
    inp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    out = tmp_path / "out.jsonl"
    r = run("code-utterances", str(inp), "--coder", str(coder_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, "b", "c"] and got[1]["note"] == "kept"
    assert [g["code"] for g in got] == ["Q", "Q", "Q"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": 1}\n', "in.jsonl:1: 'text' must be a non-empty string"),
        ('{"text": "hi"}\n', "in.jsonl:1: each line needs an 'id'"),
        ('{"id": 1, "text": "hi"}\n{"id": 1, "text": "yo"}\n', "in.jsonl:2: id 1 repeats line 1"),
        ('{"id": 1, "text": "hi", "language": "fr"}\n', "in.jsonl:1: 'language' must be zh or en"),
        ('{"id": 1, "text": "hi", "context": 5}\n', "in.jsonl:1: 'context' must be a string"),
        ('{"id": 1, "text": "hi", "history": ["a"]}\n', "in.jsonl:1: 'history' must be a string"),
        ('{"id": 1, "text": "hi"\n', "in.jsonl:1: invalid JSON"),
        ("\n", "in.jsonl: no utterances in the file"),
    ],
)
def test_code_utterances_bad_input(coder_dir, tmp_path, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    line = _one_line_error(run("code-utterances", str(inp), "--coder", str(coder_dir), "-o", str(tmp_path / "o.jsonl")))
    assert message in line and line.startswith(str(tmp_path)), line
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_coder_and_data_specs(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "text": "hi"}\n')
    line = _one_line_error(
        run("code-utterances", str(inp), "--coder", str(tmp_path / "nope"), "-o", str(tmp_path / "o"))
    )
    assert "no such coder folder" in line
    line = _one_line_error(run("code-utterances", str(inp), "--coder", "llm:openai", "-o", str(tmp_path / "o")))
    assert "expected llm:<backend>:<model>" in line
    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "c"), "--data", "foo=bar"))
    assert "unknown source 'foo'" in line
    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "c"), "--data", f"annomi={tmp_path / 'none.csv'}"))
    assert "no such file" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "d", "source": "x", "language": "en", "turns": []}\n')
    line = _one_line_error(run("code", str(bad), "--coder", str(tmp_path / "nope"), "-o", str(tmp_path / "o")))
    assert line.startswith(f"{bad}:1:") and "turns" in line


def test_llm_coder_cli_retries_and_records(tmp_path):
    """An LLM that answers an unknown code, then a valid one; and one that never gets it right."""

    def reply(messages):
        if _is_globals(messages):
            return '{"cct": 3, "sst": 3, "partnership": 4, "empathy": 4}'
        if len(messages) == 2:
            return '{"codes": ["Reframe"]}'
        return json.dumps({"codes": ["GI"] * _n_utterances(messages[:2])})

    server = FakeOpenAI(reply)
    try:
        d = demo_dialogues("en", "raw")[0]
        src = tmp_path / "d.jsonl"
        src.write_text(d.model_dump_json() + "\n")
        out = tmp_path / "coded.jsonl"
        r = run("code", str(src), "--coder", "llm:openai:fake", "--base-url", server.url, "-o", str(out))
        assert r.returncode == 0, r.stderr
        coded = read_dialogues(out)[0]
        assert {u.code for t in coded.turns for u in t.codes or []} == {"GI"}
        assert coded.miti_globals.partnership == 4
        n_volleys = sum(t.role == "counselor" for t in d.turns)
        assert len(server.requests) == 2 * n_volleys + 1  # every volley asked twice; globals once
    finally:
        server.close()

    server = FakeOpenAI(lambda m: "no JSON here")
    try:
        inp = tmp_path / "in.jsonl"
        inp.write_text('{"id": 1, "text": "How are you?"}\n')
        out = tmp_path / "out.jsonl"
        r = run(
            "code-utterances",
            str(inp),
            "--coder",
            "llm:openai:fake",
            "--base-url",
            server.url,
            "--retries",
            "1",
            "-o",
            str(out),
        )
        assert r.returncode == 0, r.stderr
        got = json.loads(out.read_text())
        assert got["code"] is None and "not a JSON object" in got["coder_error"]
        assert "1 failed" in r.stderr
        assert len(server.requests) == 2
    finally:
        server.close()


def test_codes_are_keys():
    assert set(CODES) == {"GI", "Persuade", "PwP", "Q", "SR", "CR", "AF", "Seek", "EA", "Confront"}


def test_train_coder_unknown_recipe_is_a_one_line_error(tmp_path):
    r = run("train-coder", "-o", str(tmp_path / "c"), "--recipe", "bogus")
    _one_line_error(r)
    assert "unknown coder recipe 'bogus'" in r.stderr + r.stdout and not (tmp_path / "c").exists()


def test_train_coder_source_weights(tmp_path):
    # a dialogues file's labels are their own source, named after the file
    extra = tmp_path / "mine.jsonl"
    extra.write_text(demo_files("en")[0].read_text(encoding="utf-8"), encoding="utf-8")
    r = run(
        "train-coder",
        "-o",
        str(tmp_path / "c"),
        "--quick",
        "--data",
        f"dialogues={extra}",
        "--weight",
        "MINE=3",
        "--weight",
        "demo=0.5",
    )
    assert r.returncode == 0, r.stderr
    weights = json.loads((tmp_path / "c" / "coder.json").read_text())["config"]["source_weights"]
    assert weights["mine"] == 3.0 and weights["demo"] == 0.5 and weights["welivita"] == 0.2
    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "d"), "--quick", "--weight", "welivita=1"))
    assert "--weight welivita: no training utterances come from that source" in line and not (tmp_path / "d").exists()
    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "z"), "--quick", "--weight", "demo=0"))
    assert "every training utterance would weigh 0" in line and not (tmp_path / "z").exists()
    for bad in ("welivita", "welivita=-1", "welivita=lots", "=1"):
        line = _one_line_error(run("train-coder", "-o", str(tmp_path / "e"), "--quick", "--weight", bad))
        assert "expected SOURCE=W" in line


def test_train_coder_exclude_leaves_dialogues_out(tmp_path):
    """--exclude: a grader that never saw an experiment's test dialogues (nor their globals)."""
    dialogues = demo_dialogues("en")[:2]
    held = tmp_path / "samples.test.jsonl"  # a samples file names its dialogues by dialogue_id
    held.write_text("".join(json.dumps({"dialogue_id": d.id, "round": 1}) + "\n" for d in dialogues))
    n_held = sum(len(t.codes or []) for d in dialogues for t in d.turns if t.role == "counselor")
    full = run("train-coder", "-o", str(tmp_path / "all"), "--quick")
    part = run("train-coder", "-o", str(tmp_path / "part"), "--quick", "--exclude", str(held))
    assert full.returncode == 0 and part.returncode == 0, part.stderr
    info_all = json.loads((tmp_path / "all" / "coder.json").read_text())["info"]
    info = json.loads((tmp_path / "part" / "coder.json").read_text())["info"]
    assert n_held > 0 and info["excluded"] == {
        "files": [held.name],
        "dialogues": 2,
        "utterances": n_held,
        "ids": sorted(d.id for d in dialogues),
    }
    assert info["n_examples"] == info_all["n_examples"] - n_held and "excluded" not in info_all
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dialogue_id": "x"}\n{"round": 2}\n')
    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "b"), "--quick", "--exclude", str(bad)))
    assert line.startswith(f"{bad}:2:") and "dialogue_id" in line and not (tmp_path / "b").exists()
