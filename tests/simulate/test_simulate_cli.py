"""`mi-llm simulate` end to end on the embedded model (a toy client and a toy counselor)."""

from __future__ import annotations

import json

import pytest

from mi_llm.corpus.schema import read_dialogues
from tests.fuzz.helpers import run_cli


@pytest.mark.integration
def test_simulate_runs_offline_on_the_embedded_model(tmp_path):
    out = tmp_path / "sim"
    argv = ["simulate", "--personas", "demo:zh", "--sessions", "1", "--max-rounds", "2", "-o", str(out)]
    argv += ["--counselor-max-tokens", "32", "--client-max-tokens", "32"]
    r = run_cli(argv)
    assert r.code == 0, r.err
    [session] = read_dialogues(out / "sessions.jsonl")
    assert session.language == "zh" and 1 <= session.meta["rounds"] <= 2
    report = json.loads((out / "outcomes.json").read_text(encoding="utf-8"))
    assert report["summary"]["sessions"] == 1 and report["sessions"][0]["id"] == session.id
    assert not any(t.talk for t in session.turns)  # the sessions file is raw; outcomes.json holds the coding
    assert all(x in ("change", "sustain", "neutral") for x in report["sessions"][0]["client_talk"] if x)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="toy-client"' in page and f"sessions/{session.id}.html" in page  # the embedded client is a toy
    assert (out / "sessions" / f"{session.id}.html").is_file()
    fidelity = json.loads((out / "fidelity.json").read_text(encoding="utf-8"))
    assert fidelity["simulated"]["zh"]["client_turns"] == len(session.meta["stages"])
    assert [g["reference"] for g in fidelity["gaps"]] == ["cpsycound"]  # the real clients in Chinese
    assert "simulator fidelity" in " ".join(r.err.split())  # the table (rich console: stderr)
    before = (out / "sessions.jsonl").read_text(encoding="utf-8")
    r = run_cli(argv)  # everything is there: nothing runs again
    assert r.code == 0, r.err
    assert (out / "sessions.jsonl").read_text(encoding="utf-8") == before
