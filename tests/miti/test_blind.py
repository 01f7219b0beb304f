"""`mi-llm miti blind / unblind`: blinded samples of several systems for human coding."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from mi_llm.corpus.schema import read_dialogues, write_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.miti.blind import blind_sample, unblind, write_blind


def demo_dialogues():
    path = resources.files("mi_llm.resources").joinpath("demo", "en", "mi-a.jsonl")
    return read_dialogues(str(path))[:5]


def as_system(dialogues, name):
    """The same dialogues as if a system had written them: its name in the meta, codes kept."""
    return [d.model_copy(update={"meta": {**d.meta, "system": name, "miti_coder": "x"}}) for d in dialogues]


def test_paired_draw_hides_the_system_and_the_automatic_codes():
    base = demo_dialogues()
    systems = {"base": as_system(base, "base"), "sft": as_system(base, "sft"), "dpo": as_system(base, "dpo")}
    sessions, key = blind_sample(systems, dialogues=2, seed=3)
    assert len(sessions) == 6 and key["paired"] and len({s.id for s in sessions}) == 6
    by_system = {}
    for s in sessions:
        by_system.setdefault(key["sessions"][s.id]["system"], set()).add(key["sessions"][s.id]["id"])
    assert set(by_system) == {"base", "sft", "dpo"}
    assert by_system["base"] == by_system["sft"] == by_system["dpo"] and len(by_system["base"]) == 2
    for s in sessions:
        assert s.meta == {} and s.source == "blind" and s.miti_globals is None
        assert all(t.meta == {} and t.talk is None for t in s.turns)
        counselor = [t for t in s.turns if t.role == "counselor"]
        assert counselor and all(t.codes and all(u.code is None for u in t.codes) for t in counselor)
        original = next(d for d in base if d.id == key["sessions"][s.id]["id"])
        assert [t.text for t in s.turns] == [t.text for t in original.turns]  # the words are untouched
    # the systems are mixed, not in blocks, and the draw is repeatable
    assert [key["sessions"][s.id]["system"] for s in sessions] != sorted(
        key["sessions"][s.id]["system"] for s in sessions
    )
    again, key2 = blind_sample(systems, dialogues=2, seed=3)
    assert [s.id for s in again] == [s.id for s in sessions] and key2 == key


def test_systems_without_shared_dialogues_are_drawn_each_on_its_own():
    a, b = demo_dialogues()[:3], demo_dialogues()[3:]
    sessions, key = blind_sample({"a": a, "b": b}, dialogues=2)
    assert not key["paired"] and len(sessions) == 4
    with pytest.raises(MiLlmError, match="no sessions for b"):
        blind_sample({"a": a, "b": []})
    with pytest.raises(MiLlmError, match="--dialogues must be at least 1"):
        blind_sample({"a": a}, dialogues=0)


def test_unblind_restores_ids_and_systems_and_refuses_strangers(tmp_path):
    base = demo_dialogues()
    sessions, key = blind_sample({"base": base, "sft": base}, dialogues=3)
    sessions_path, key_path = write_blind(tmp_path / "blind", sessions, key)
    human = [
        s.model_copy(
            update={
                "turns": [
                    t.model_copy(update={"codes": [u.model_copy(update={"code": "SR"}) for u in t.codes]})
                    if t.codes
                    else t
                    for t in s.turns
                ]
            }
        )
        for s in read_dialogues(sessions_path)
    ]
    coded = tmp_path / "alice.jsonl"
    write_dialogues(coded, human)
    per_system = unblind(coded, key_path)
    assert sorted(per_system) == ["base", "sft"]
    for system, ds in per_system.items():
        assert sorted(d.id for d in ds) == sorted(
            key["sessions"][b]["id"] for b in key["sessions"] if key["sessions"][b]["system"] == system
        )
        assert all(d.meta["system"] == system and d.meta["blind_id"] in key["sessions"] for d in ds)
        assert all(u.code == "SR" for d in ds for t in d.turns if t.codes for u in t.codes)
    stranger = tmp_path / "stranger.jsonl"
    write_dialogues(stranger, [*human[:1], base[0]])
    with pytest.raises(InputError, match=r"stranger.jsonl:2: session id .* is not in the key"):
        unblind(stranger, key_path)
    with pytest.raises(MiLlmError, match="cannot read the blinding key"):
        unblind(coded, sessions_path)
    (tmp_path / "other.json").write_text('{"sessions": {}}')
    with pytest.raises(MiLlmError, match="not a blinding key"):
        unblind(coded, tmp_path / "other.json")


def run(*args):
    return subprocess.run([sys.executable, "-m", "mi_llm", "miti", *args], capture_output=True, text=True)


def test_the_commands(tmp_path):
    a, b = tmp_path / "m_base.coded.jsonl", tmp_path / "m_finetuned.coded.jsonl"
    write_dialogues(a, as_system(demo_dialogues(), "m base"))
    write_dialogues(b, as_system(demo_dialogues(), "m finetuned"))
    r = run("blind", str(a), str(b), "--dialogues", "2", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    key = json.loads((tmp_path / "out" / "key.json").read_text())
    assert key["systems"] == ["m_base", "m_finetuned"] and len(key["sessions"]) == 4
    assert "m base" not in (tmp_path / "out" / "sessions.jsonl").read_text()
    r = run(
        "unblind",
        str(tmp_path / "out" / "sessions.jsonl"),
        "--key",
        str(tmp_path / "out" / "key.json"),
        "-o",
        str(tmp_path / "by"),
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "by").iterdir()) == ["m_base.jsonl", "m_finetuned.jsonl"]
    r = run("blind", str(a), f"m_base={b}", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "given twice" in r.stderr and len(r.stderr.strip().splitlines()) == 1
