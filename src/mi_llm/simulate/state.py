"""The client's state machine: stage of change, receptivity, and an action chosen each turn
(the ConsistentMI / CAMI design, with rules of this project).

After each counselor reply, `ClientState.step` reads the reply's MITI codes (from the MITI
coder) and whether it touched one of the persona's motivators:

- receptivity (1-5) moves by the weights in `EFFECTS`: reflections, affirmations, autonomy
  support (EA) and seeking collaboration raise it; persuasion without permission and
  confrontation lower it; a motivator touched raises it; one turn moves it at most
  `MAX_RISE` up or `MAX_FALL` down;
- a turn whose effect is above zero is *earned*; a turn below zero resets the earned count
  of the stage;
- the stage moves forward only when earned: receptivity at least the stage's `ADVANCE_AT`,
  at least `EARNED_TO_ADVANCE` earned turns in the stage, and (out of precontemplation) a
  motivator touched or a complex reflection in the stage;
- the stage moves back one when a harmful turn (effect <= `SETBACK_EFFECT`) leaves
  receptivity below `SETBACK_BELOW`;
- the client drops out after `DROPOUT_TURNS` harmful turns in a row at the lowest
  receptivity; in preparation, with receptivity at least `PLAN_AT` after a turn there, the
  client states a plan (the session's success);
- otherwise the action is drawn from the stage's actions with weights by receptivity band,
  with the session's own seeded random generator: the same seed, the same trajectory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mi_llm.simulate.persona import STAGES, PersonaCard, Stage

ACTIONS = (
    "deny",
    "downplay",
    "blame",
    "inform",
    "engage",
    "hesitate",
    "doubt",
    "acknowledge",
    "accept",
    "reject",
    "plan",
    "leave",
)

# Effect of one occurrence of a MITI code in the counselor's reply on receptivity.
EFFECTS: dict[str, float] = {
    "SR": 0.25,
    "CR": 0.5,
    "AF": 0.3,
    "EA": 0.4,  # emphasising autonomy
    "Seek": 0.3,
    "PwP": 0.1,  # information given with permission
    "Q": 0.0,
    "GI": 0.0,
    "Persuade": -0.6,  # persuasion without permission
    "Confront": -1.0,
}
MOTIVATOR_EFFECT = 0.3
MAX_RISE = 1.0
MAX_FALL = 1.5
ADVANCE_AT: dict[str, float] = {"precontemplation": 3.5, "contemplation": 4.0}
EARNED_TO_ADVANCE = 2
SETBACK_EFFECT = -0.5
SETBACK_BELOW = 2.5
DROPOUT_TURNS = 3
PLAN_AT = 4.0

# Action weights per stage and receptivity band (low < 2.5 <= mid < 3.5 <= high).
WEIGHTS: dict[str, dict[str, dict[str, int]]] = {
    "precontemplation": {
        "low": {"deny": 3, "downplay": 2, "blame": 2, "inform": 1},
        "mid": {"downplay": 2, "inform": 2, "deny": 1, "engage": 1},
        "high": {"inform": 2, "engage": 3, "downplay": 1},
    },
    "contemplation": {
        "low": {"doubt": 3, "hesitate": 2, "inform": 1},
        "mid": {"hesitate": 2, "acknowledge": 2, "doubt": 1, "engage": 1, "inform": 1},
        "high": {"acknowledge": 3, "engage": 2, "hesitate": 1},
    },
    "preparation": {
        "low": {"reject": 2, "hesitate": 2},
        "mid": {"accept": 2, "hesitate": 1, "reject": 1},
        "high": {"accept": 3, "hesitate": 1},
    },
}


def band(receptivity: float) -> str:
    return "low" if receptivity < 2.5 else "mid" if receptivity < 3.5 else "high"


def behaviour_effect(codes: Sequence[str | None], motivator_touched: bool) -> float:
    """The change in receptivity one counselor reply earns, before the per-turn limits."""
    effect = sum(EFFECTS.get(c, 0.0) for c in codes if c)
    if motivator_touched:
        effect += MOTIVATOR_EFFECT
    return max(-MAX_FALL, min(MAX_RISE, effect))


def touches_motivator(text: str, persona: PersonaCard) -> bool:
    """Whether the counselor's reply names one of the persona's motivators (case-folded
    substring: a toy reading of "the topics that move them", no synonyms)."""
    folded = text.casefold()
    return any(m.casefold() in folded for m in persona.motivators if m.strip())


@dataclass
class Step:
    """What one counselor reply did to the client."""

    effect: float
    receptivity: float
    stage: Stage
    action: str
    moved: int  # +1 forward, -1 back, 0 stayed


@dataclass
class ClientState:
    stage: Stage
    receptivity: float
    rng: random.Random
    earned: int = 0  # earned turns in the current stage
    turns_in_stage: int = 0
    deepened: bool = False  # a motivator touched or a complex reflection in this stage
    harmful_in_row: int = 0
    moves_back: int = 0
    history: list[Step] = field(default_factory=list)

    @classmethod
    def start(cls, persona: PersonaCard, seed: int) -> ClientState:
        return cls(stage=persona.stage, receptivity=float(persona.receptivity), rng=random.Random(seed))

    def opening_action(self) -> str:
        """The client's first words: what brings them, in the manner of their stage."""
        return self._draw()

    def step(self, codes: Sequence[str | None], motivator_touched: bool) -> Step:
        """Apply one counselor reply; return the client's next action and the new state."""
        effect = behaviour_effect(codes, motivator_touched)
        self.receptivity = round(max(1.0, min(5.0, self.receptivity + effect)), 3)
        self.turns_in_stage += 1
        if motivator_touched or "CR" in codes:
            self.deepened = True
        if effect > 0:
            self.earned += 1
            self.harmful_in_row = 0
        elif effect < 0:
            self.earned = 0
            self.harmful_in_row += 1
        moved = self._move(effect)
        action = self._action()
        step = Step(round(effect, 3), self.receptivity, self.stage, action, moved)
        self.history.append(step)
        return step

    def _move(self, effect: float) -> int:
        index = STAGES.index(self.stage)
        if effect <= SETBACK_EFFECT and self.receptivity < SETBACK_BELOW and index > 0:
            self._enter(STAGES[index - 1])
            self.moves_back += 1
            return -1
        threshold = ADVANCE_AT.get(self.stage)
        ready = threshold is not None and self.receptivity >= threshold and self.earned >= EARNED_TO_ADVANCE
        if ready and (self.stage != "precontemplation" or self.deepened):
            self._enter(STAGES[index + 1])
            return 1
        return 0

    def _enter(self, stage: Stage) -> None:
        self.stage, self.earned, self.turns_in_stage, self.deepened = stage, 0, 0, False

    def _action(self) -> str:
        if self.harmful_in_row >= DROPOUT_TURNS and self.receptivity <= 1.0:
            return "leave"
        if self.stage == "preparation" and self.turns_in_stage >= 1 and self.receptivity >= PLAN_AT:
            return "plan"
        return self._draw()

    def _draw(self) -> str:
        weights = WEIGHTS[self.stage][band(self.receptivity)]
        names = sorted(weights)  # a fixed order: the draw depends on the seed only
        return self.rng.choices(names, weights=[weights[n] for n in names])[0]
