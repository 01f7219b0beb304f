"""Simulated sessions in a report: the per-counselor table (means with confidence intervals
over sessions, reference rows beside them), trajectories by round, and one page per session
a clinician can read (turns, codes, stage and receptivity, end reason).

Used by the run report (the pipeline's simulate stage: one simulation per counselor) and by
`mi-llm simulate` for its own folder (SimulatePaths.report). Reads a simulation folder's
outcomes.json and sessions.coded.jsonl (written by simulate.outcomes.write_outcomes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.io import atomic_writer
from mi_llm.layout import SimulatePaths, meta_file
from mi_llm.llm.resolve import DEFAULT_MODEL
from mi_llm.simulate.aggregate import OUTCOME_KEYS
from mi_llm.simulate.persona import STAGES
from mi_llm.simulate.references import format_ci, reference_rows

TOY_CLIENT_NOTE = (
    "The client is the embedded 270M model: a toy client. It does not hold a role, repeats itself and drifts "
    "between languages; the coders then code noise and the state machine reacts to it. These sessions show that "
    "the machinery runs, nothing about a counselor. Use a capable client model (--client-url) for real work."
)
STATE_MACHINE_NOTE = (
    "Stage and receptivity come from the client's state machine (docs/simulate.md), which reads the MITI "
    "coder's codes of each counselor reply; they are this project's rules, not a clinical judgement."
)


@dataclass
class Simulation:
    """One counselor's simulated sessions, as read from its folder."""

    label: str
    outcomes: dict[str, Any]
    coded: list[Dialogue] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # sessions.jsonl.meta.json: settings, backends

    @property
    def toy_client(self) -> bool:
        """The client was the embedded model (as its backend described it)."""
        model = (self.meta.get("client") or {}).get("model") or {}
        if isinstance(model, str):  # an endpoint's backend names the served model
            return model == DEFAULT_MODEL
        return model.get("source") == "embedded" or model.get("name") == DEFAULT_MODEL


def read_simulation(folder: str | Path, label: str) -> Simulation:
    paths = SimulatePaths(Path(folder))
    outcomes = json.loads(paths.outcomes.read_text(encoding="utf-8"))
    coded = read_dialogues(paths.coded) if paths.coded.is_file() else []
    sidecar = meta_file(paths.sessions)
    meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    return Simulation(label, outcomes, coded, meta)


# ---------------------------------------------------------------- trajectories


def change_share_by_round(outcomes: Sequence[Mapping[str, Any]]) -> list[tuple[int, float, int]]:
    """(round, change / (change + sustain) among the client turns of that round, how many
    turns were change or sustain); round 0 is the client's opening. Rounds without change or
    sustain talk are left out."""
    longest = max((len(o.get("client_talk") or []) for o in outcomes), default=0)
    out = []
    for k in range(longest):
        talk = [o["client_talk"][k] for o in outcomes if k < len(o.get("client_talk") or [])]
        change, sustain = talk.count("change"), talk.count("sustain")
        if change + sustain:
            out.append((k, change / (change + sustain), change + sustain))
    return out


def stage_by_round(outcomes: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(round, mean stage: 0 precontemplation, 1 contemplation, 2 preparation) over every
    session; a session that has ended keeps its last stage, so each point averages them all."""
    tracks = [[STAGES.index(s) for s in o.get("stages") or []] for o in outcomes]
    tracks = [t for t in tracks if t]
    longest = max((len(t) for t in tracks), default=0)
    return [(k, sum(t[min(k, len(t) - 1)] for t in tracks) / len(tracks)) for k in range(longest)]


# ---------------------------------------------------------------- tables


def aggregate_table(simulations: Sequence[Simulation]) -> dict[str, Any]:
    """Columns: the outcome keys; rows: each counselor (mean [95% CI]), then the reference rows."""
    columns = [label for _, label in OUTCOME_KEYS]
    keys = [k for k, _ in OUTCOME_KEYS]
    rows: list[dict[str, Any]] = []
    for sim in simulations:
        agg = sim.outcomes.get("aggregate") or {}
        summary = sim.outcomes.get("summary") or {}
        rows.append(
            {
                "label": sim.label,
                "sessions": summary.get("sessions"),
                "failed": summary.get("failed"),
                "cells": [format_ci(agg[k]) if k in agg else "n/a" for k in keys],
                "kind": "counselor",
            }
        )
    for ref in reference_rows(keys):
        rows.append(
            {
                "label": ref["label"],
                "sessions": "",
                "failed": "",
                "cells": [ref["cells"].get(k, "") for k in keys],
                "kind": ref["kind"],
                "source": ref["source"],
            }
        )
    methods = sorted({s.outcomes.get("ci_method", "") for s in simulations} - {""})
    sources = list(dict.fromkeys(f"{str(r['kind']).capitalize()} rows: {r['source']}" for r in rows if r.get("source")))
    return {"columns": columns, "rows": rows, "ci_methods": methods, "sources": sources}


def session_rows(sim: Simulation, href_of: Callable[[str], str]) -> list[dict[str, Any]]:
    """One line per session for the index, with the link to its page."""
    return [
        {
            "id": o["id"],
            "persona_id": o.get("persona_id"),
            "language": o.get("language"),
            "behavior": o.get("behavior"),
            "stages": f"{o.get('start_stage')} -> {o.get('final_stage')}",
            "end_reason": o.get("end_reason"),
            "rounds": o.get("rounds"),
            "success": "yes" if o.get("success") else "no",
            "change_share": "n/a" if o.get("change_share") is None else f"{o['change_share']:.2f}",
            "href": href_of(o["id"]),
        }
        for o in sim.outcomes.get("sessions", [])
    ]


def session_page_context(sim: Simulation, dialogue: Dialogue, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """What a session's page shows, turn by turn."""
    turns: list[dict[str, Any]] = []
    for t in dialogue.turns:
        meta = t.meta or {}
        if t.role == "counselor":
            codes = [(u.code or "not coded", u.text) for u in t.codes or []]
            turns.append({"role": "counselor", "text": t.text, "codes": codes})
        else:
            effect = meta.get("effect")
            turns.append(
                {
                    "role": "client",
                    "text": t.text,
                    "round": meta.get("round"),
                    "talk": t.talk or "not coded",
                    "action": meta.get("action"),
                    "stage": meta.get("stage"),
                    "receptivity": None if meta.get("receptivity") is None else f"{meta['receptivity']:.2f}",
                    "effect": None if effect is None else f"{effect:+.2f}",
                }
            )
    facts = [
        ("counselor", sim.label),
        ("client model", dialogue.meta.get("client")),
        ("persona", f"{outcome.get('persona_id')} ({dialogue.meta.get('persona_source')})"),
        ("behaviour", outcome.get("behavior")),
        ("goal", dialogue.topic),
        ("language", dialogue.language),
        ("stage", f"{outcome.get('start_stage')} -> {outcome.get('final_stage')}"),
        ("moves back", outcome.get("moves_back")),
        ("end", f"{outcome.get('end_reason')} after {outcome.get('rounds')} rounds"),
        ("success", "yes (a plan, in preparation)" if outcome.get("success") else "no"),
        ("R:Q", _num(outcome.get("r_q"))),
        ("%CR", _num(outcome.get("pct_cr"))),
        ("MI-adherent ratio", _num(outcome.get("mi_adherent_ratio"))),
        ("client change talk share", _num(outcome.get("change_share"))),
    ]
    return {"id": dialogue.id, "facts": facts, "turns": turns, "toy_client": sim.toy_client}


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.2f}"


def write_session_pages(
    sim: Simulation, page_of: Callable[[str], Path], render: Callable[..., str], index: Path
) -> int:
    """One page per coded session at page_of(session id), linking back to `index`
    (render: the page template's render function)."""
    by_id = {o["id"]: o for o in sim.outcomes.get("sessions", [])}
    written = 0
    for d in sim.coded:
        if d.id not in by_id:
            continue
        page = page_of(d.id)
        page.parent.mkdir(parents=True, exist_ok=True)
        back = os.path.relpath(index, page.parent)
        with atomic_writer(page) as f:
            f.write(render(session=session_page_context(sim, d, by_id[d.id]), back=back))
        written += 1
    return written
