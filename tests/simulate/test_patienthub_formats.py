"""PatientHub profiles beyond ConsistentMI: ClientCAST and SimPatient import; AnnaAgent and
Patient-Psi (CBT clients) are refused with the reason; bad profiles are FILE:LINE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.errors import InputError
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.prompting import client_messages

PATIENTHUB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "patienthub"

CLIENT_CAST = {
    "basic_profile": {
        "gender": "Male",
        "age": 41,
        "occupation": "Not Specified",
        "topic": "smoking – cutting down before the baby arrives.",
        "situation": "He smokes a pack a day.",
        "emotion": "He feels torn.",
        "reasons": "His partner is pregnant.",
        "problem": "smoking – smokes more under stress.",
        "emotional_fluctuation": "Low – steady.",
        "resistance": "High – defends his smoking.",
    }
}
SIM_PATIENT = {
    "persona": {"age": 34, "gender": "male", "occupation": "engineer"},
    "cognitive_model": {"patient_control": 3, "patient_efficacy": 4, "patient_awareness": 7, "patient_reward": 8},
    "between_session_event": "He drank at a party.",
}


def write(path: Path, profiles: list) -> Path:
    path.write_text(json.dumps(profiles, indent=1), encoding="utf-8")
    return path


def test_client_cast_profiles_import(tmp_path):
    [c] = load_personas(write(tmp_path / "cc.json", [CLIENT_CAST]))
    assert (c.id, c.behavior, c.goal) == ("clientcast-01", "smoking", "cutting down before the baby arrives")
    assert (c.stage, c.receptivity) == ("precontemplation", 2)  # High resistance
    assert c.persona[0] == "You are the client (Male, 41 years old)." and c.beliefs[0] == "smokes more under stress."
    assert c.motivation == "His partner is pregnant." and c.source.startswith("patienthub:clientCast")
    low = {"basic_profile": {**CLIENT_CAST["basic_profile"], "resistance": "Low – open"}}
    [c] = load_personas(write(tmp_path / "cc.json", [low]))
    assert (c.stage, c.receptivity) == ("contemplation", 4)


def test_sim_patient_profiles_import_and_run_in_chinese(tmp_path):
    [c] = load_personas(write(tmp_path / "sp.json", [SIM_PATIENT]))
    assert (c.id, c.behavior, c.stage) == ("simpatient-01", "alcohol", "contemplation")  # aware, low efficacy
    assert c.receptivity == round(1 + 4 * ((3 + 4 + 7) / 3 - 1) / 9, 1)
    assert c.persona[0] == "You are a 34-year-old male engineer." and "He drank at a party." in c.persona
    assert c.beliefs[2] == "You know your drinking causes you problems (7/10)."
    able = {**SIM_PATIENT, "cognitive_model": {**SIM_PATIENT["cognitive_model"], "patient_efficacy": 8}}
    [c] = load_personas(write(tmp_path / "sp.json", [able]))
    assert c.stage == "preparation"
    system = client_messages(c, [], c.stage, "engage", "zh")[0]["content"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in system)  # the Chinese client prompt


@pytest.mark.parametrize(
    "profile, message",
    [
        ({"basic_profile": {**CLIENT_CAST["basic_profile"], "resistance": "Some"}}, "resistance must begin"),
        ({"basic_profile": {**CLIENT_CAST["basic_profile"], "topic": ""}}, "topic is empty"),
        ({**SIM_PATIENT, "cognitive_model": {"patient_control": 3}}, "cognitive_model.patient_efficacy must be"),
        ({**SIM_PATIENT, "cognitive_model": {**SIM_PATIENT["cognitive_model"], "patient_reward": 11}}, "1-10"),
    ],
)
def test_a_bad_profile_is_file_line(tmp_path, profile, message):
    good = CLIENT_CAST if "basic_profile" in profile else SIM_PATIENT
    f = write(tmp_path / "p.json", [good, profile])
    with pytest.raises(InputError) as e:
        load_personas(f)
    line = f.read_text().splitlines().index(" {", 2) + 1  # where the second profile starts
    assert str(e.value).startswith(f"{f}:{line}: profile 2: ") and message in str(e.value)


@pytest.mark.skipif(not PATIENTHUB.is_dir(), reason="../shared/data/patienthub is absent")
def test_the_shared_patienthub_files():
    assert [c.id for c in load_personas(PATIENTHUB / "clientCast.json")] == ["clientcast-01"]
    assert [c.id for c in load_personas(PATIENTHUB / "simPatient.json")] == ["simpatient-01"]
    for name in ("annaAgent", "patientPsi"):
        with pytest.raises(InputError, match=f"{name}.json:2: profile 1: a PatientHub {name} profile: a CBT client"):
            load_personas(PATIENTHUB / f"{name}.json")
