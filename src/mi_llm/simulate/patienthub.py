"""PatientHub's ConsistentMI client profiles (MIT licence; Yang et al., ACL 2025, from AnnoMI
sessions) as persona cards.

    read_consistent_mi("../shared/data/patienthub/consistentMI.json")

A profile's fields map onto the card: `Behavior` -> behavior, `topic` -> goal, `Personas`
-> persona, `Beliefs` -> beliefs, `Acceptable Plans` -> acceptable_plans, `initial_stage`
-> stage, the first of `suggestibilities` (its receptivity at the start, 1-5) ->
receptivity; of `Motivation`, the short entries (topics such as "Employment") are the
motivators and the sentences the motivation. A profile with no acceptable plan (8 of the 38)
or no belief (1) gets an open one stated by the importer. The profiles are in English; the simulator
runs them in Chinese too (`--language zh`: the client is told to speak Chinese).
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
    """Every profile of a ConsistentMI JSON list as a card; a bad profile is `FILE:LINE: what`
    (the line where the profile starts)."""
    path = Path(path)
    cards: list[PersonaCard] = []
    seen: dict[str, int] = {}
    for number, (line, profile) in enumerate(parse_json_list(path), start=1):
        card = profile_card(profile, number, path, line)
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
