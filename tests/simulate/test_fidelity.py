"""Simulator fidelity (simulated vs real client talk) and the separation check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.corpus.schema import Dialogue, Turn, read_dialogues
from mi_llm.layout import SIMULATED_SESSIONS
from mi_llm.miti.coders.client_talk import shipped_client_coder_dir
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.fidelity import (
    REFERENCE_SOURCES,
    client_profile,
    fidelity_report,
    load_reference,
    reference_profiles,
    sample_dialogues,
    talk_profile,
    utterance_length,
    write_fidelity,
)
from mi_llm.simulate.outcomes import write_outcomes
from mi_llm.simulate.runner import simulate
from mi_llm.simulate.scripted import ScriptedCounselor
from mi_llm.simulate.separation import bootstrap_ci, compare
from tests.simulate.conftest import KeywordTalkCoder, ScriptedClient

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_utterance_length_counts_chars_in_chinese_and_words_in_english():
    assert utterance_length("我 最近总是熬夜。", "zh") == 8
    assert utterance_length("  I stay up   late. ", "en") == 4


def test_talk_profile_shares_reversals_and_first_change():
    p = talk_profile(
        [
            [
                "neutral",
                "change",
                "neutral",
                "sustain",
                "change",
                "change",
            ],  # change->sustain once, change->change once
            ["sustain", "neutral", None],  # an empty turn is not coded
            ["neutral", "neutral", "change"],
        ]
    )
    assert p["coded_turns"] == 11
    assert p["shares"] == {"change": round(4 / 11, 4), "sustain": round(2 / 11, 4), "neutral": round(5 / 11, 4)}
    assert p["change_pairs"] == 2 and p["change_then_sustain"] == 0.5
    assert p["first_change_round"]["n"] == 2 and p["first_change_round"]["median"] == 1.5
    assert talk_profile([[None]])["shares"]["change"] is None


def _dialogue(i: int, client: list[str], talk: list[str]) -> Dialogue:
    turns = []
    for text, t in zip(client, talk):
        turns += [Turn(role="client", text=text, talk=t), Turn(role="counselor", text="Mm.")]
    return Dialogue(id=f"d{i}", source="x", language="en", turns=turns)


def test_client_profile_and_sample_keep_dialogues_whole():
    ds = [_dialogue(i, ["one two three", "four"], ["change", "neutral"]) for i in range(10)]
    p = client_profile(ds, "en")
    assert p["client_turns"] == 20 and p["length"]["median"] == 2 and p["length_unit"] == "words"
    assert p["rounds"]["median"] == 2 and p["talk"]["shares"]["change"] == 0.5
    sample = sample_dialogues(ds, 5, seed=1)
    assert len(sample) == 3 and sample == sample_dialogues(ds, 5, seed=1)  # 6 turns: whole dialogues
    assert sample != sample_dialogues(ds, 5, seed=2)


def _reference(change: float = 0.2) -> dict:
    profile = {
        "language": "en",
        "what": "test",
        "length": {"median": 10.0},
        "talk": {
            "shares": {"change": change, "sustain": 0.1, "neutral": 0.7},
            "change_then_sustain": 0.3,
            "first_change_round": {"median": 4.0},
        },
    }
    return {"client_talk_coder": "client-talk:keywords", "corpora": {"real": profile}}


def test_fidelity_of_simulated_sessions(tmp_path, miti_coder):
    cfg = SimulateConfig(sessions=4, max_rounds=6, retry_wait_s=0, personas="demo:en")
    simulate(cfg, load_personas(cfg.personas), ScriptedCounselor("reflective"), ScriptedClient(), miti_coder, tmp_path)
    sessions = read_dialogues(tmp_path / SIMULATED_SESSIONS)
    outcomes = write_outcomes(tmp_path / "outcomes.json", sessions, miti_coder, KeywordTalkCoder())
    report = write_fidelity(tmp_path / "fidelity.json", sessions, outcomes, _reference())
    assert json.loads((tmp_path / "fidelity.json").read_text()) == report
    sim = report["simulated"]["en"]
    assert set(report["simulated"]) == {"en"} and sim["dialogues"] == 4
    assert sim["client_turns"] == sum(len(d.meta["stages"]) for d in sessions)
    # the scripted client's turns are "Turn k: I <action>": words counted
    lengths = [len(t.text.split()) for d in sessions for t in d.turns if t.role == "client"]
    assert sim["length"]["mean"] == round(sum(lengths) / len(lengths), 2)
    plans = [d.meta["rounds"] for d in sessions if d.meta["end_reason"] == "plan"]
    assert sim["stage"]["resolved"] == len(plans) / 4
    assert sim["stage"]["moves_back_per_session"] == sum(d.meta["moves_back"] for d in sessions) / 4
    [gap] = report["gaps"]
    assert gap["reference"] == "real" and gap["language"] == "en"
    assert gap["length_ratio_median"] == round(sim["length"]["median"] / 10.0, 3)
    assert gap["change_share_diff"] == round(sim["talk"]["shares"]["change"] - 0.2, 4)
    assert report["client_talk_coder"] == "client-talk:keywords"
    # a reference in another language makes no gap row
    other = _reference()
    other["corpora"]["real"]["language"] = "zh"
    assert fidelity_report(sessions, outcomes, other)["gaps"] == []


def test_the_shipped_reference_describes_the_three_real_corpora():
    ref = load_reference()
    assert ref["client_talk_coder"] == f"client-talk:{shipped_client_coder_dir().name}"
    assert set(ref["corpora"]) == set(REFERENCE_SOURCES)
    langs = {name: c["language"] for name, c in ref["corpora"].items()}
    assert langs == {"annomi": "en", "mibot": "en", "cpsycound": "zh"}
    for c in ref["corpora"].values():
        shares = c["talk"]["shares"]
        assert abs(sum(shares.values()) - 1) < 1e-3 and c["talk"]["coded_turns"] > 100
        assert c["length"]["median"] > 0 and c["client_turns"] >= c["talk"]["coded_turns"]


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")
def test_reference_profiles_from_the_real_data():
    ref = reference_profiles(DATA, KeywordTalkCoder(), max_client_turns=40, seed=0)
    assert {k: v["language"] for k, v in ref.items()} == {"annomi": "en", "mibot": "en", "cpsycound": "zh"}
    assert ref["cpsycound"]["length_unit"] == "chars" and ref["annomi"]["length_unit"] == "words"
    assert ref["annomi"]["dialogues"] == 106 and ref["cpsycound"]["dialogues"] > 3000
    for c in ref.values():
        assert 40 <= c["talk"]["coded_turns"] < c["client_turns"]  # a sample is coded, lengths are over all


# ---------------------------------------------------------------- separation


def test_bootstrap_ci():
    mean, lo, hi = bootstrap_ci([0.0, 1.0] * 20)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.4
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([]) is None


def test_the_harness_separates_a_reflective_from_a_confrontational_counselor(tmp_path, miti_coder):
    cfg = SimulateConfig(sessions=8, max_rounds=10, retry_wait_s=0, personas="demo")
    outcomes = {}
    for style in ("reflective", "confrontational"):
        out = tmp_path / style
        simulate(cfg, load_personas(cfg.personas), ScriptedCounselor(style), ScriptedClient(), miti_coder, out)
        sessions = read_dialogues(out / SIMULATED_SESSIONS)
        outcomes[style] = write_outcomes(out / "outcomes.json", sessions, miti_coder, KeywordTalkCoder())["sessions"]
    rows = compare(outcomes["reflective"], outcomes["confrontational"])
    assert all(r["paired"] for r in rows.values())
    for metric in ("success", "stage_progress", "final_receptivity", "dropout"):
        assert rows[metric]["separates"], (metric, rows[metric])
    assert rows["dropout"]["diff"][0] < 0 < rows["success"]["diff"][0]
    # the same counselor against itself does not separate
    same = compare(outcomes["reflective"], outcomes["reflective"])
    assert not any(r["separates"] for r in same.values())
