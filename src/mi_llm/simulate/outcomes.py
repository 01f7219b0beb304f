"""Session outcomes: the counselor's MITI summary, the client's change-talk share, the final
stage and success, per session and averaged over the run (outcomes.json).

Every counselor turn is coded by the MITI coder (globals rated by its model: a caveat, they
are estimates from the codes) and every client turn by the client-talk coder; the scores
are `mi_llm.miti.scoring.score_session`'s. Success = the client reached preparation and
stated a plan. Per counselor (the run): the means with their confidence intervals over
sessions (simulate.aggregate) and the published / computed reference rows beside them
(simulate.references).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mi_llm.corpus.schema import Dialogue, write_dialogues
from mi_llm.io import write_json
from mi_llm.miti.scoring import score_session
from mi_llm.simulate.aggregate import CI_METHOD, aggregate_outcomes

# 2: `aggregate` (means with confidence intervals over sessions) and the coded sessions file
VERSION = 2
# Per-session values averaged over sessions, in table order.
MEAN_KEYS = ("rounds", "r_q", "pct_cr", "mi_adherent_ratio", "change_share", "moves_back")
GLOBALS_CAVEAT = "globals are the MITI coder's estimates from its codes, not a human rater's"


class DialogueCoder(Protocol):
    name: str

    def code_dialogues(self, dialogues: Sequence[Dialogue], *args: Any, **kwargs: Any) -> list[Dialogue]: ...


class ClientTalkCoder(Protocol):
    """`mi_llm.miti.coders.client_talk.ClientTalkCoder`: code(items) -> change | sustain | neutral."""

    name: str

    def code(self, items: Sequence[Any]) -> list[str]: ...


def code_sessions(dialogues: Sequence[Dialogue], coder: DialogueCoder, client_coder: ClientTalkCoder) -> list[Dialogue]:
    """Copies with every counselor turn MITI-coded (globals rated) and every client turn's talk type."""
    from mi_llm.miti.coders.base import code_client_turns

    coded = coder.code_dialogues(dialogues, client_talk=None)
    code_client_turns(coded, client_coder)
    for d in coded:
        d.meta["client_talk_coder"] = client_coder.name
    return coded


def session_outcome(d: Dialogue) -> dict[str, Any]:
    scores = score_session(d)
    talk = [t.talk for t in d.turns if t.role == "client"]
    meta = d.meta
    return {
        "id": d.id,
        "persona_id": meta.get("persona_id"),
        "language": d.language,
        "behavior": meta.get("behavior"),
        "end_reason": meta.get("end_reason"),
        "rounds": meta.get("rounds"),
        "start_stage": meta.get("start_stage"),
        "final_stage": meta.get("final_stage"),
        "success": meta.get("end_reason") == "plan" and meta.get("final_stage") == "preparation",
        "moves_back": meta.get("moves_back"),
        "r_q": scores.summary.r_q,
        "pct_cr": scores.summary.pct_cr,
        "mi_adherent_ratio": scores.summary.mi_adherent_ratio,
        "mia": scores.summary.mia,
        "mina": scores.summary.mina,
        "counts": scores.counts,
        "globals": scores.globals,
        "change_share": None if scores.client_talk is None else scores.client_talk.change_share,
        "client_talk": talk,  # per client turn, the opening first: the trajectory
        "stages": meta.get("stages"),
        "receptivity": meta.get("receptivity"),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def summarize(outcomes: Sequence[dict[str, Any]], failed: int) -> dict[str, Any]:
    """Means over sessions (an undefined ratio left out of its mean), the success rate."""
    n = len(outcomes)
    summary: dict[str, Any] = {
        "sessions": n,
        "failed": failed,
        "success_rate": round(sum(o["success"] for o in outcomes) / n, 4) if n else None,
        "end_reasons": {r: sum(1 for o in outcomes if o["end_reason"] == r) for r in ("plan", "dropout", "max_rounds")},
        "final_stages": {
            s: sum(1 for o in outcomes if o["final_stage"] == s)
            for s in ("precontemplation", "contemplation", "preparation")
        },
    }
    for k in MEAN_KEYS:
        summary[f"mean_{k}"] = _mean([o[k] for o in outcomes])
    return summary


def write_outcomes(
    path: str | Path,
    dialogues: Sequence[Dialogue],
    coder: DialogueCoder,
    client_coder: ClientTalkCoder,
    failed: int = 0,
    coded_path: str | Path | None = None,
) -> dict[str, Any]:
    """Code the sessions, write outcomes.json (and the coded sessions to `coded_path`)."""
    coded = code_sessions(dialogues, coder, client_coder)
    if coded_path is not None:
        write_dialogues(coded_path, coded)
    outcomes = [session_outcome(d) for d in coded]
    report = {
        "version": VERSION,
        "coders": {"miti": coder.name, "client_talk": client_coder.name},
        "caveat": GLOBALS_CAVEAT,
        "summary": summarize(outcomes, failed),
        "aggregate": aggregate_outcomes(outcomes),
        "ci_method": CI_METHOD,
        "sessions": outcomes,
    }
    write_json(path, report)
    return report
