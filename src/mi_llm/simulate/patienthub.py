"""PatientHub's client profiles (MIT licence) as persona cards: ConsistentMI (Yang et al., ACL
2025, from AnnoMI sessions), ClientCAST and SimPatient (alcohol). `read_patienthub` tells the
format by the first profile's keys; AnnaAgent and Patient-Psi profiles are CBT clients with no
target behaviour or stage of change, and are refused with the reason.

    read_patienthub("../shared/data/patienthub/consistentMI.json")

A profile's fields map onto the card: `Behavior` -> behavior, `topic` -> goal, `Personas`
-> persona, `Beliefs` -> beliefs, `Acceptable Plans` -> acceptable_plans, `initial_stage`
-> stage, the first of `suggestibilities` (its receptivity at the start, 1-5) ->
receptivity; of `Motivation`, the short entries (topics such as "Employment") are the
motivators and the sentences the motivation. A profile with no acceptable plan (8 of the 38)
or no belief (1) gets an open one stated by the importer. The profiles are in English; the simulator
runs them in Chinese too (`--language zh`: the client is told to speak Chinese).

ClientCAST (`basic_profile`): the topic's head ("alcohol consumption") -> behavior, its tail
-> goal; situation and emotion -> persona; problem and emotional fluctuation -> beliefs;
reasons -> motivation; resistance Low / Medium / High -> contemplation at receptivity 4 /
contemplation at 3 / precontemplation at 2 (this project's reading of the field).
SimPatient (`cognitive_model`, alcohol misuse): persona and the between-session event ->
persona; each cognitive variable (control, efficacy, awareness, reward, 1-10) -> a belief
sentence; stage from awareness and efficacy (awareness < 5: precontemplation; with
efficacy >= 6 too: preparation; else contemplation) and receptivity the mean of control,
efficacy and awareness on 1-5. Neither lists plans: the importer states an open one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mi_llm.errors import InputError
from mi_llm.io import describe_validation_error
from mi_llm.simulate.persona import PersonaCard, parse_json_list

SOURCE = "patienthub:consistentMI (MIT)"
REQUIRED = ("topic", "Behavior", "initial_stage", "suggestibilities", "Personas", "Beliefs", "Acceptable Plans")
TOPIC_WORDS = 4  # a Motivation entry of at most this many words is a topic, longer ones are sentences


def read_consistent_mi(path: str | Path) -> list[PersonaCard]:
    """Every profile of a ConsistentMI JSON list as a card (see `read_patienthub`)."""
    return read_patienthub(path)


def profile_format(profile: Any) -> str:
    """consistentMI | clientCast | simPatient | annaAgent | patientPsi | unknown."""
    if not isinstance(profile, dict):
        return "unknown"
    if "basic_profile" in profile:
        return "clientCast"
    if "cognitive_model" in profile:
        return "simPatient"
    if "complaint_chain" in profile or ("profile" in profile and "situation" in profile):
        return "annaAgent"
    if "helpless_belief" in profile or "auto_thought" in profile:
        return "patientPsi"
    return "consistentMI"  # its own checks name what is missing


def read_patienthub(path: str | Path) -> list[PersonaCard]:
    """Every profile of a PatientHub JSON list as a card; the format is the first profile's;
    a bad profile is `FILE:LINE: profile N: what` (the line where the profile starts)."""
    path = Path(path)
    items = parse_json_list(path)
    kind = profile_format(items[0][1]) if items else "consistentMI"
    if kind in ("annaAgent", "patientPsi"):
        raise InputError(
            path,
            f"profile 1: a PatientHub {kind} profile: a CBT client with no target behaviour or stage of change, "
            "not an MI client (consistentMI, clientCast and simPatient profiles import)",
            items[0][0],
        )
    make = {"consistentMI": profile_card, "clientCast": client_cast_card, "simPatient": sim_patient_card}[kind]
    cards: list[PersonaCard] = []
    seen: dict[str, int] = {}
    for number, (line, profile) in enumerate(items, start=1):
        card = make(profile, number, path, line)
        if card.id in seen:
            raise InputError(path, f"profile id {card.id!r} repeats the profile at line {seen[card.id]}", line)
        seen[card.id] = line
        cards.append(card)
    if not cards:
        raise InputError(path, "no profiles")
    return cards


def profile_card(profile: Any, number: int, path: Path, line: int) -> PersonaCard:
    if not isinstance(profile, dict):
        raise InputError(path, f"profile {number}: expected a JSON object", line)
    missing = [k for k in REQUIRED if k not in profile]
    if missing:
        raise InputError(path, f"profile {number}: missing {', '.join(repr(k) for k in missing)}", line)
    suggest = profile["suggestibilities"]
    if not isinstance(suggest, list) or not suggest:
        raise InputError(path, f"profile {number}: suggestibilities must be a non-empty list of 1-5", line)
    motivation = [str(m) for m in profile.get("Motivation") or [] if str(m).strip()]
    topics = [m for m in motivation if len(m.split()) <= TOPIC_WORDS]
    sentences = [m for m in motivation if len(m.split()) > TOPIC_WORDS]
    goal = str(profile["topic"])
    fields = {
        # idx is not unique in the file (profiles of one source session): the position is
        "id": f"consistentmi-{number:02d}",
        "language": "en",
        "behavior": profile["Behavior"],
        "goal": goal,
        "persona": profile["Personas"],
        # 8 profiles list no plan and 1 no belief: the importer states the open one
        "beliefs": profile["Beliefs"] or [f"You are not sure that {goal} matters for you."],
        "motivation": " ".join(sentences) or f"You could be moved to {goal}.",
        "motivators": [t.lower() for t in topics] or goal.split()[-1:],
        "acceptable_plans": profile["Acceptable Plans"] or [f"A first small step toward {goal}, chosen by you."],
        "stage": str(profile["initial_stage"]).strip().lower(),
        "receptivity": suggest[0],
        "source": f"{SOURCE} idx {profile.get('idx')}",
    }
    try:
        return PersonaCard.model_validate(fields)
    except ValidationError as e:
        raise InputError(path, f"profile {number}: {describe_validation_error(e)}", line) from None


def _validated(fields: dict[str, Any], number: int, path: Path, line: int) -> PersonaCard:
    try:
        return PersonaCard.model_validate(fields)
    except ValidationError as e:
        raise InputError(path, f"profile {number}: {describe_validation_error(e)}", line) from None


def _object(profile: Any, key: str, number: int, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(profile, dict):
        raise InputError(path, f"profile {number}: expected a JSON object", line)
    value = profile.get(key)
    if not isinstance(value, dict):
        raise InputError(path, f"profile {number}: missing {key!r} (an object)", line)
    return value


def _known(value: Any) -> str:
    text = " ".join(str(value or "").split())
    return "" if text.lower() in ("", "not specified", "unknown", "-1", "none") else text


CLIENT_CAST_RESISTANCE = {"low": ("contemplation", 4), "medium": ("contemplation", 3), "high": ("precontemplation", 2)}


def client_cast_card(profile: Any, number: int, path: Path, line: int) -> PersonaCard:
    basic = _object(profile, "basic_profile", number, path, line)
    topic = _known(basic.get("topic"))
    if not topic:
        raise InputError(path, f"profile {number}: basic_profile.topic is empty", line)
    head, _, tail = topic.partition("–") if "–" in topic else topic.partition(" - ")
    behavior, goal = head.strip(), (tail.strip().rstrip(".") or f"change {head.strip()}")
    level = _known(basic.get("resistance")).split("–")[0].split()[:1]
    if not level or level[0].lower() not in CLIENT_CAST_RESISTANCE:
        raise InputError(path, f"profile {number}: basic_profile.resistance must begin Low, Medium or High", line)
    stage, receptivity = CLIENT_CAST_RESISTANCE[level[0].lower()]
    who = ", ".join(
        x
        for x in (
            _known(basic.get("gender")),
            f"{basic['age']} years old" if isinstance(basic.get("age"), int) and basic["age"] > 0 else "",
            _known(basic.get("occupation")),
        )
        if x
    )
    persona = [f"You are the client ({who})." if who else "You are the client."]
    persona += [x for x in (_known(basic.get("situation")), _known(basic.get("emotion"))) if x]
    # "alcohol consumption – struggles with ...", "Medium – the client talks ...": the text after the label
    beliefs = [
        x.split("–", 1)[-1].strip()
        for x in (_known(basic.get("problem")), _known(basic.get("emotional_fluctuation")))
        if x.split("–", 1)[-1].strip()
    ]
    return _validated(
        {
            "id": f"clientcast-{number:02d}",
            "language": "en",
            "behavior": behavior,
            "goal": goal,
            "persona": persona,
            "beliefs": beliefs or [f"You are not sure that {goal} matters for you."],
            "motivation": _known(basic.get("reasons")) or f"You could be moved to {goal}.",
            "motivators": behavior.lower().split()[:1],
            "acceptable_plans": [f"A first small step toward {goal}, chosen by you."],
            "stage": stage,
            "receptivity": receptivity,
            "source": "patienthub:clientCast (MIT)",
        },
        number,
        path,
        line,
    )


SIM_PATIENT_BELIEFS = {
    # variable: (low, high) sentences; the score (1-10) picks one, its value is stated
    "patient_control": (
        "You feel drinking controls you more than you control it",
        "You feel in control of your drinking",
    ),
    "patient_efficacy": (
        "You doubt you could cut down if you tried",
        "You believe you could cut down if you decided to",
    ),
    "patient_awareness": ("You do not see your drinking as a problem", "You know your drinking causes you problems"),
    "patient_reward": ("Drinking gives you little", "Drinking relaxes you and feels rewarding"),
}


def sim_patient_card(profile: Any, number: int, path: Path, line: int) -> PersonaCard:
    model = _object(profile, "cognitive_model", number, path, line)
    scores: dict[str, float] = {}
    for key in SIM_PATIENT_BELIEFS:
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 10:
            raise InputError(path, f"profile {number}: cognitive_model.{key} must be a number 1-10", line)
        scores[key] = float(value)
    who = profile.get("persona") if isinstance(profile.get("persona"), dict) else {}
    desc = " ".join(
        x
        for x in (
            f"{who['age']}-year-old" if who.get("age") else "",
            _known(who.get("ethnicity")),
            _known(who.get("gender")),
            _known(who.get("occupation")),
        )
        if x
    )
    persona = [f"You are a {desc}." if desc else "You are the client."]
    if _known(who.get("mbti")):
        persona.append(f"Your personality type is {_known(who.get('mbti'))}.")
    if _known(profile.get("between_session_event")):
        persona.append(_known(profile.get("between_session_event")))
    beliefs = [f"{SIM_PATIENT_BELIEFS[k][scores[k] > 5]} ({scores[k]:g}/10)." for k in SIM_PATIENT_BELIEFS]
    awareness, efficacy = scores["patient_awareness"], scores["patient_efficacy"]
    stage = "precontemplation" if awareness < 5 else "preparation" if efficacy >= 6 else "contemplation"
    mean = (scores["patient_control"] + efficacy + awareness) / 3  # 1-10
    return _validated(
        {
            "id": f"simpatient-{number:02d}",
            "language": "en",
            "behavior": "alcohol",
            "goal": "drinking less",
            "persona": persona,
            "beliefs": beliefs,
            "motivation": "You regret losing control when you drink, and you want to handle such situations better.",
            "motivators": ["control", "sobriety", "friends"],
            "acceptable_plans": ["A first small step toward drinking less, chosen by you."],
            "stage": stage,
            "receptivity": round(1 + 4 * (mean - 1) / 9, 1),
            "source": "patienthub:simPatient (MIT)",
        },
        number,
        path,
        line,
    )
