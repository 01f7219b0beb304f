"""mi-llm simulate: persona cards, the state machine, the batched resumable runner, outcomes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.layout import SIMULATED_FAILED, SIMULATED_SESSIONS
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.outcomes import write_outcomes
from mi_llm.simulate.persona import PersonaCard, read_cards
from mi_llm.simulate.runner import simulate
from mi_llm.simulate.state import DROPOUT_TURNS, ClientState
from tests.simulate.conftest import CONFRONTATIONAL, REFLECTIVE, KeywordTalkCoder, ScriptedClient, ScriptedCounselor

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "patienthub" / "consistentMI.json"


def card(**changes) -> dict:
    base = {
        "id": "t1",
        "language": "en",
        "behavior": "smoking",
        "goal": "quit smoking",
        "persona": ["You are a test client."],
        "beliefs": ["Smoking relaxes you."],
        "motivation": "Your kids.",
        "motivators": ["kids"],
        "acceptable_plans": ["Smoke outside only."],
        "stage": "precontemplation",
        "receptivity": 3,
    }
    return {**base, **changes}


def write_cards(path: Path, cards: list[dict]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cards), encoding="utf-8")
    return path


# ---------------------------------------------------------------- persona cards


def test_bundled_cards_are_valid_and_varied():
    cards = load_personas("demo")
    zh = [c for c in cards if c.language == "zh"]
    en = [c for c in cards if c.language == "en"]
    assert len(zh) >= 30 and len(en) >= 30
    for group in (zh, en):
        assert {c.stage for c in group} == {"precontemplation", "contemplation", "preparation"}
        assert len({c.behavior for c in group}) >= 10
        assert len({round(c.receptivity) for c in group}) >= 3
    assert len({c.id for c in cards}) == len(cards)
    assert load_personas("demo:zh") == zh


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"stage": "action"}, "stage"),
        ({"receptivity": 7}, "receptivity"),
        ({"beliefs": []}, "beliefs"),
        ({"persona": ["  "]}, "persona"),
        ({"id": "has space"}, "id"),
        ({"mood": "x"}, "mood"),
    ],
)
def test_a_bad_card_is_file_line(tmp_path, bad, message):
    f = write_cards(tmp_path / "cards.jsonl", [card(id="ok1"), card(id="ok2"), card(**bad)])
    with pytest.raises(InputError) as e:
        read_cards(f)
    assert str(e.value).startswith(f"{f}:3: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_repeated_card_id_names_both_lines(tmp_path):
    f = write_cards(tmp_path / "cards.jsonl", [card(), card()])
    with pytest.raises(InputError, match=r"cards.jsonl:2: persona id 't1' repeats line 1"):
        read_cards(f)


def test_a_bad_card_stops_the_cli_before_anything_runs(tmp_path):
    from tests.fuzz.helpers import run_cli

    f = write_cards(tmp_path / "cards.jsonl", [card(), card(id="t2", receptivity="high")])
    out = tmp_path / "out"
    r = run_cli(["simulate", "--personas", str(f), "-o", str(out), "--backend", "no-such-backend"])
    assert r.code == 2 and r.err.strip().startswith(f"{f}:2: receptivity") and len(r.err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared/data/patienthub is absent")
def test_patienthub_consistent_mi_profiles_import():
    cards = load_personas(SHARED)
    assert len(cards) == 38 and len({c.id for c in cards}) == 38
    assert all(c.stage == "precontemplation" and c.language == "en" for c in cards)
    assert all(c.acceptable_plans and c.beliefs and c.motivators for c in cards)
    assert all(c.source.startswith("patienthub:consistentMI (MIT)") for c in cards)
    raw = json.loads(SHARED.read_text(encoding="utf-8"))
    assert [c.receptivity for c in cards] == [p["suggestibilities"][0] for p in raw]
    assert cards[0].persona == raw[0]["Personas"]


def test_patienthub_bad_profile_is_located(tmp_path):
    f = tmp_path / "consistentMI.json"
    good = {
        "idx": 1,
        "topic": "smoking cessation",
        "Behavior": "smoking",
        "initial_stage": "Precontemplation",
        "suggestibilities": [3],
        "Personas": ["You smoke."],
        "Beliefs": ["It is fine."],
        "Acceptable Plans": [],
        "Motivation": ["Health", "You worry about your lungs and your kids."],
    }
    f.write_text(json.dumps([good, {**good, "initial_stage": "Action"}], indent=1), encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_personas(f)
    line = f.read_text().splitlines().index(" {", 2) + 1  # where the second profile starts
    assert str(e.value).startswith(f"{f}:{line}: profile 2: stage")
    f.write_text(json.dumps([good]), encoding="utf-8")
    [c] = load_personas(f)
    assert c.motivators == ["health"] and "lungs" in c.motivation and "smoking cessation" in c.acceptable_plans[0]


# ---------------------------------------------------------------- the state machine


def persona(**changes) -> PersonaCard:
    return PersonaCard.model_validate(card(**changes))


def test_reflections_and_autonomy_raise_receptivity_persuasion_and_confrontation_lower_it():
    up = ClientState.start(persona(), 1)
    assert up.step(["CR"], False).receptivity > 3 and up.step(["EA", "AF"], False).receptivity > 3.5
    down = ClientState.start(persona(), 1)
    assert down.step(["Persuade"], False).receptivity < 3
    r = down.receptivity
    assert down.step(["Confront"], False).receptivity < r
    neutral = ClientState.start(persona(), 1)
    assert neutral.step(["Q", "GI"], False).receptivity == 3


def test_the_stage_moves_only_when_earned():
    s = ClientState.start(persona(receptivity=4.5), 1)
    assert s.step(["SR"], False).stage == "precontemplation"  # one earned turn is not enough
    assert s.step(["SR"], False).stage == "precontemplation"  # nor without a motivator or a complex reflection
    step = s.step(["SR"], True)  # a motivator touched
    assert step.stage == "contemplation" and step.moved == 1
    s = ClientState.start(persona(receptivity=4.5), 1)
    s.step(["CR"], False)
    s.step(["Confront"], False)  # resets the earned turns
    assert s.step(["CR"], False).stage == "precontemplation"
    assert s.step(["CR"], False).stage == "contemplation"


def test_setback_dropout_and_plan():
    s = ClientState.start(persona(stage="contemplation", receptivity=2.5), 1)
    step = s.step(["Confront"], False)
    assert step.stage == "precontemplation" and step.moved == -1 and s.moves_back == 1
    s = ClientState.start(persona(receptivity=1), 1)
    actions = [s.step(["Confront"], False).action for _ in range(DROPOUT_TURNS)]
    assert actions[-1] == "leave" and "leave" not in actions[:-1]
    s = ClientState.start(persona(stage="preparation", receptivity=4.5), 1)
    assert s.step(["SR"], False).action == "plan"


def test_same_seed_same_trajectory():
    codes = [random.Random(7).choice([["SR"], ["Q"], ["Persuade"], ["CR", "EA"], []]) for _ in range(20)]

    def run(seed):
        s = ClientState.start(persona(), seed)
        return [s.opening_action()] + [s.step(c, False).action for c in codes]

    assert run(3) == run(3)
    assert any(run(3) != run(seed) for seed in range(4, 10))


# ---------------------------------------------------------------- the runner


def config(**changes) -> SimulateConfig:
    return SimulateConfig(**{"sessions": 4, "max_rounds": 6, "retry_wait_s": 0, "personas": "demo:en", **changes})


def run(tmp_path, miti_coder, lines=REFLECTIVE, client=None, cfg=None, **kw):
    cfg = cfg or config()
    return simulate(
        cfg,
        load_personas(cfg.personas),
        ScriptedCounselor(lines),
        client or ScriptedClient(),
        miti_coder,
        tmp_path,
        **kw,
    )


def test_sessions_are_written_in_the_corpus_schema_with_their_trajectory(tmp_path, miti_coder):
    client = ScriptedClient()
    counselor = ScriptedCounselor(REFLECTIVE)
    cfg = config()
    res = simulate(cfg, load_personas(cfg.personas), counselor, client, miti_coder, tmp_path)
    sessions = read_dialogues(tmp_path / SIMULATED_SESSIONS)
    assert res.written_now == 4 and len(sessions) == 4 and not res.failed
    assert max(counselor.calls) == 4 and max(client.calls) == 4  # every active session in one call
    for d in sessions:
        rounds = d.meta["rounds"]
        assert d.meta["end_reason"] in ("plan", "dropout", "max_rounds") and 1 <= rounds <= 6
        assert len(d.rounds()) == rounds and d.turns[0].role == "client"
        assert len(d.meta["stages"]) == len(d.meta["receptivity"]) == rounds + 1
        assert all(t.codes for t in d.turns if t.role == "counselor")  # coded as the session ran
        assert d.meta["persona_id"] and d.topic


def test_same_seed_same_sessions_other_seed_others(tmp_path, miti_coder):
    run(tmp_path / "a", miti_coder)
    run(tmp_path / "b", miti_coder)
    run(tmp_path / "c", miti_coder, cfg=config(seed=7))
    a, b, c = ((tmp_path / x / SIMULATED_SESSIONS).read_text() for x in "abc")
    assert a == b and a != c


def test_resume_after_a_kill(tmp_path, miti_coder):
    whole = tmp_path / "whole"
    run(whole, miti_coder, cfg=config(sessions=6, personas="demo"))
    killed = tmp_path / "killed"

    def kill(event, n):
        if event == "session":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(killed, miti_coder, cfg=config(sessions=6, personas="demo"), progress=kill)
    out = killed / SIMULATED_SESSIONS
    first = read_dialogues(out)
    assert 1 <= len(first) < 6
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": "torn')  # killed in the middle of a line
    res = run(killed, miti_coder, cfg=config(sessions=6, personas="demo"))
    assert res.resumed == len(first) and res.written_now == 6 - len(first)
    done = {d.id: d for d in read_dialogues(out)}
    assert sorted(done) == sorted(d.id for d in read_dialogues(whole / SIMULATED_SESSIONS))
    assert done == {d.id: d for d in read_dialogues(whole / SIMULATED_SESSIONS)}
    with pytest.raises(MiLlmError, match="other settings .*max_rounds"):
        run(killed, miti_coder, cfg=config(sessions=6, personas="demo", max_rounds=3))


def test_a_failing_endpoint_fails_its_session_and_the_run_goes_on(tmp_path, miti_coder):
    cards = [card(id=f"c{i}", persona=[f"You are client number {i}."]) for i in range(3)]
    f = write_cards(tmp_path / "cards.jsonl", cards)
    cfg = config(sessions=3, personas=str(f), retries=2)
    client = ScriptedClient(fail_on="client number 1.")
    res = run(tmp_path / "out", miti_coder, client=client, cfg=cfg)
    assert [x["id"] for x in res.failed] == ["sim00001-c1"]
    assert "ConnectionError: endpoint unreachable" in res.failed[0]["error"]
    assert res.written_now == 2
    failed = [json.loads(x) for x in (tmp_path / "out" / SIMULATED_FAILED).read_text().splitlines()]
    assert failed == res.failed
    # the failing conversation was retried alone (1 + retries calls) after the batch failed
    assert client.calls[:5] == [3, 3, 3, 1, 1]


def test_a_reflective_counselor_moves_clients_a_confrontational_one_does_not(tmp_path, miti_coder):
    cfg = config(sessions=8, max_rounds=10, personas="demo")
    results = {}
    for name, lines in (("reflective", REFLECTIVE), ("confrontational", CONFRONTATIONAL)):
        run(tmp_path / name, miti_coder, lines=lines, cfg=cfg)
        sessions = read_dialogues(tmp_path / name / SIMULATED_SESSIONS)
        results[name] = sessions
    stage_rank = {"precontemplation": 0, "contemplation": 1, "preparation": 2}

    def progress(sessions):
        return sum(stage_rank[d.meta["final_stage"]] - stage_rank[d.meta["start_stage"]] for d in sessions)

    def receptivity(sessions):
        return sum(d.meta["final_receptivity"] for d in sessions) / len(sessions)

    good, bad = results["reflective"], results["confrontational"]
    assert progress(good) > progress(bad)
    assert receptivity(good) >= 4.5 and receptivity(bad) <= 1.5
    assert any(d.meta["end_reason"] == "plan" for d in good)
    assert any(d.meta["end_reason"] == "dropout" for d in bad)
    assert not any(d.meta["end_reason"] == "plan" for d in bad)


def test_outcomes(tmp_path, miti_coder):
    run(tmp_path, miti_coder, cfg=config(sessions=3))
    sessions = read_dialogues(tmp_path / SIMULATED_SESSIONS)
    report = write_outcomes(tmp_path / "outcomes.json", sessions, miti_coder, KeywordTalkCoder(), failed=1)
    assert json.loads((tmp_path / "outcomes.json").read_text()) == report
    s = report["summary"]
    assert s["sessions"] == 3 and s["failed"] == 1 and sum(s["end_reasons"].values()) == 3
    for o, d in zip(report["sessions"], sessions):
        assert o["success"] == (o["end_reason"] == "plan")
        assert len(o["client_talk"]) == d.meta["rounds"] + 1
        assert o["r_q"] is None or o["r_q"] >= 0
    assert report["coders"] == {"miti": miti_coder.name, "client_talk": "client-talk:keywords"}
