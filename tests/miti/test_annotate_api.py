"""The coding tool's server API without a browser: views, validation, autosave, export."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from mi_llm.corpus.schema import read_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.miti.annotate.app import AnnotationProject, create_app
from mi_llm.miti.annotate.store import AutosaveStore
from mi_llm.miti.segment import split_utterances
from tests.miti.helpers import coded_dict

BASE = "http://127.0.0.1:8765"  # what the page's requests carry when served on the default address


@pytest.fixture
def sessions(tmp_path):
    a = coded_dict([["Q", "SR"], ["CR"]], {"cct": 4, "sst": 4, "partnership": 4, "empathy": 4}, id="a")
    b = {
        "id": "b",
        "source": "t",
        "language": "zh",
        "turns": [
            {"role": "client", "text": "我想少喝点。"},
            {"role": "counselor", "text": "你想少喝一点。是什么让你这么想？"},
        ],
    }
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(a) + "\n" + json.dumps(b, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def test_views_save_validation_and_export(sessions, tmp_path):
    project = AnnotationProject(sessions, "ann")
    client = TestClient(create_app(project), base_url=BASE)
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    meta = client.get("/api/meta").json()
    assert [c["shortcut"] for c in meta["codes"]] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"]
    # existing segmentation kept, codes and globals cleared (independent coding)
    v = client.get("/api/sessions/0").json()
    assert [u["text"] for u in v["turns"][1]["utterances"]] == ["Utterance 0.0.", "Utterance 0.1."]
    assert all(u["code"] is None for u in v["turns"][1]["utterances"])
    assert v["globals"] == {"cct": None, "sst": None, "partnership": None, "empathy": None}
    # an uncoded zh session is pre-split at sentence punctuation
    vb = client.get("/api/sessions/1").json()
    assert [u["text"] for u in vb["turns"][1]["utterances"]] == ["你想少喝一点。", "是什么让你这么想？"]
    assert client.get("/api/sessions/9").status_code == 404

    state = {
        "turns": {
            "1": [{"text": "Utterance 0.0.", "code": "Q"}, {"text": "Utterance 0.1.", "code": "AF"}],
            "3": [{"text": "Utterance 1.0.", "code": None}],
        },
        "globals": {"cct": 2, "sst": None, "partnership": 5, "empathy": 5},
        "done": False,
    }
    bad = [
        ({**state, "globals": {"cct": 6}}, "outside 1-5"),
        ({**state, "globals": {"warmth": 3}}, "unknown global rating"),
        (
            {**state, "turns": {**state["turns"], "1": [{"text": "Utterance 0.0. Utterance 0.1.", "code": "XX"}]}},
            "unknown MITI code 'XX'",
        ),
        ({**state, "turns": {"1": state["turns"]["1"]}}, "missing ['3']"),
        ({**state, "turns": {**state["turns"], "3": [{"text": "Something else.", "code": None}]}}, "do not add up"),
    ]
    for payload, msg in bad:
        r = client.put("/api/sessions/0", json=payload)
        assert r.status_code == 422 and msg in r.json()["detail"], r.json()
    r = client.put("/api/sessions/0", json=state)
    assert r.status_code == 200 and r.json()["coded"] == 2 and r.json()["rated"] == 3

    # A new server process (new project object) sees the autosave.
    project.store.close()
    again = AnnotationProject(sessions, "ann")
    v = TestClient(create_app(again), base_url=BASE).get("/api/sessions/0").json()
    assert [u["code"] for u in v["turns"][1]["utterances"]] == ["Q", "AF"] and v["globals"]["cct"] == 2
    summary = again.export()
    assert summary["sessions"] == 1 and summary["without_globals"] == 1 and summary["not_saved"] == 1
    (d,) = read_dialogues(summary["path"])
    assert d.id == "a" and d.miti_globals is None and d.meta["miti_coder"] == "ann"
    assert [u.code for u in d.turns[1].codes] == ["Q", "AF"]


def test_autosave_belongs_to_one_coder(sessions):
    AnnotationProject(sessions, "ann", out=sessions.with_name("shared.jsonl")).store.close()
    with pytest.raises(MiLlmError, match="holds 'ann'"):
        AnnotationProject(sessions, "bob", out=sessions.with_name("shared.jsonl"))


def test_keep_codes_prefills(sessions):
    v = AnnotationProject(sessions, "k", keep_codes=True).view(0)
    assert [u["code"] for u in v["turns"][1]["utterances"]] == ["Q", "SR"] and v["globals"]["cct"] == 4


@pytest.mark.parametrize(
    "text,language,expected",
    [
        ("You came back. What changed?", "en", ["You came back.", "What changed?"]),
        ("Keep the 3 a.m. one. Dr. Li agrees!", "en", ["Keep the 3 a.m. one.", "Dr. Li agrees!"]),
        ('She said "no." Then what?', "en", ['She said "no."', "Then what?"]),
        ("你来了。发生了什么？“我不知道！”他说。", "zh", ["你来了。", "发生了什么？", "“我不知道！”", "他说。"]),
        ("没有标点的一句话", "zh", ["没有标点的一句话"]),
        ("   ", "en", []),
    ],
)
def test_presplit(text, language, expected):
    assert split_utterances(text, language) == expected


STATE_A = {
    "turns": {
        "1": [{"text": "Utterance 0.0.", "code": "Q"}, {"text": "Utterance 0.1.", "code": "AF"}],
        "3": [{"text": "Utterance 1.0.", "code": None}],
    },
    "globals": {},
    "done": False,
}


def test_host_header_is_checked(sessions):
    client = TestClient(create_app(AnnotationProject(sessions, "ann")), base_url=BASE)
    # A DNS-rebinding page's requests carry its own name.
    for host in ("evil.example:8765", "evil.example", "127.0.0.1:8766", "localhost.evil.example:8765"):
        assert client.get("/api/sessions/0", headers={"Host": host}).status_code == 421, host
        assert client.put("/api/sessions/0", json=STATE_A, headers={"Host": host}).status_code == 421, host
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert client.get("/api/meta", headers={"Host": host}).status_code == 200, host
    alias = TestClient(create_app(AnnotationProject(sessions, "ann2"), allowed_hosts=["coding.lan"]), base_url=BASE)
    assert alias.get("/api/meta", headers={"Host": "coding.lan:8765"}).status_code == 200


def test_writes_must_be_json(sessions):
    project = AnnotationProject(sessions, "ann")
    client = TestClient(create_app(project), base_url=BASE)
    body = json.dumps(STATE_A)
    # What a cross-site form or fetch can send without a preflight.
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        for method in ("PUT", "POST"):
            r = client.request(method, "/api/sessions/0", content=body, headers=headers)
            assert r.status_code == 415, (method, headers, r.text)
        assert client.post("/api/export", content=b"", headers=headers).status_code == 415
    assert project.store.saved_ids() == set() and not project.out.exists()
    assert client.put("/api/sessions/0", json=STATE_A).status_code == 200
    assert client.post("/api/export", json={}).status_code == 200 and project.out.exists()


def test_pages_carry_a_strict_csp(sessions):
    client = TestClient(create_app(AnnotationProject(sessions, "ann")), base_url=BASE)
    for path in ("/", "/static/app.js", "/api/meta"):
        h = client.get(path).headers
        csp = h["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
    assert client.get("/api/sessions/0").headers["cache-control"] == "no-store"


def test_autosave_file_is_private(sessions, tmp_path):
    old = os.umask(0o022)  # the usual umask, under which the file used to be 0644
    try:
        project = AnnotationProject(sessions, "ann")
        client = TestClient(create_app(project), base_url=BASE)
        assert client.put("/api/sessions/0", json=STATE_A).status_code == 200
        assert stat.S_IMODE(project.autosave.stat().st_mode) == 0o600
        # An autosave left open by an older version is narrowed when opened.
        legacy = tmp_path / "legacy.sqlite3"
        AutosaveStore(legacy, "ann").close()
        legacy.chmod(0o644)
        AutosaveStore(legacy, "ann").close()
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_annotate_listens_on_loopback_only(sessions):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "mi_llm", "miti", "annotate", str(sessions), "--coder-name", "x", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = run("--host", "0.0.0.0")
    assert r.returncode == 2 and r.stderr.strip().startswith("--host 0.0.0.0: the coding page has no login"), r.stderr
    r = run("--allowed-host", "two words")
    assert r.returncode == 2 and r.stderr.strip().startswith("--allowed-host: 'two words'"), r.stderr
    assert not list(sessions.parent.glob("*.autosave.sqlite3"))  # refused before any file was made
