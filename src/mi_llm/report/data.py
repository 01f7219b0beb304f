"""What the report shows, gathered from a run directory's files by the pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mi_llm.report.sessions import Simulation

# The MI-LLM paper's reported figures (Hu et al., arXiv 2512.15446), for side-by-side tables.
PAPER_AUTOMATIC = {
    "bleu-4": {"base": "2.10-2.39", "finetuned": "5.79-6.47"},
}
PAPER_MITI = {
    "pct_cr": {"real counselors": "0.37", "fine-tuned LLMs": "0.24-0.31"},
    "mi_adherent_ratio": {"real counselors": "0.75", "fine-tuned LLMs": "0.67-0.82"},
}


@dataclass
class AutoRow:
    """One line of Table 1: a model x system x language and its metric figures."""

    model: str
    system: str  # base | finetuned
    language: str  # zh | en | all
    n: int
    scores: dict[str, float]


@dataclass
class Example:
    language: str
    sample_id: str
    client: str
    reference: str
    replies: dict[str, str]  # system label -> reply


@dataclass
class ReportData:
    name: str
    auto_rows: list[AutoRow] = field(default_factory=list)
    # system label -> one dict per session: {"counts": {code: n}, "summary": {...}, "globals": {...}}
    miti_sessions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # system label -> aggregated scores: {score: {"mean", "median", "q1", "q3", "n", "missing"}}
    miti_aggregate: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    loss_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # system label -> code-following (mi_llm.miti.following), for systems predicted with a strategy
    code_following: dict[str, dict[str, Any]] = field(default_factory=dict)
    # counselor label ("<model key> <system>") -> its simulated sessions (the simulate stage)
    simulations: dict[str, Simulation] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "automatic": [asdict(r) for r in self.auto_rows],
            "miti": self.miti_aggregate,
            "paper": {"automatic": PAPER_AUTOMATIC, "miti": PAPER_MITI},
            "settings": self.settings,
            "notes": self.notes,
            **({"code_following": self.code_following} if self.code_following else {}),
            **(
                {
                    "simulate": {
                        label: {k: sim.outcomes.get(k) for k in ("summary", "aggregate", "ci_method", "coders")}
                        for label, sim in self.simulations.items()
                    }
                }
                if self.simulations
                else {}
            ),
        }
