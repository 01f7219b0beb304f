"""Scores over many sessions: per-score statistics, pooled ratios, and the comparison table.

Statistics ignore sessions where a score is undefined (a ratio with a zero denominator,
a global of a session without ratings) and say how many were left out (`missing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from mi_llm.errors import MiLlmError
from mi_llm.miti.codebook import CODES, PAPER_FIGURES, PAPER_NOTES, THRESHOLDS, level
from mi_llm.miti.scoring import CLIENT_KEYS, SCORE_KEYS, SCORE_LABELS, SessionScores, client_talk


def describe(values: Sequence[float | None]) -> dict[str, Any]:
    """n (defined), missing, mean, sd, median, q1, q3, iqr, min, max; all None when n = 0."""
    vals = np.array([v for v in values if v is not None], dtype=float)
    out: dict[str, Any] = {"n": int(vals.size), "missing": len(values) - int(vals.size)}
    if vals.size == 0:
        return out | dict.fromkeys(("mean", "sd", "median", "q1", "q3", "iqr", "min", "max"))
    q1, median, q3 = (float(x) for x in np.percentile(vals, [25, 50, 75]))
    return out | {
        "mean": float(vals.mean()),
        "sd": float(vals.std(ddof=1)) if vals.size > 1 else None,
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": float(vals.min()),
        "max": float(vals.max()),
    }


def aggregate(scores: Sequence[SessionScores]) -> dict[str, dict[str, Any]]:
    """{score key: statistics} for the globals, summary scores and per-code counts.

    Keys: cct, sst, partnership, empathy, technical, relational, pct_cr, r_q, mia, mina,
    mi_adherent_ratio, then the 10 code keys (behaviour counts per session), then the client
    talk ratios change_share and ct_st (all missing when no client turn has a talk type).
    Scores with a threshold also get the `level` of their mean.
    """
    _same_definition(scores)
    out: dict[str, dict[str, Any]] = {}
    for key in SCORE_KEYS + CODES + CLIENT_KEYS:
        stats = describe([s.value(key) for s in scores])
        if key in THRESHOLDS:
            stats["level"] = level(key, stats["mean"])
        out[key] = stats
    return out


def pooled(scores: Sequence[SessionScores]) -> dict[str, Any]:
    """Ratios of the summed counts over all sessions (short sessions weigh less than in the mean)."""
    _same_definition(scores)
    total = {c: sum(s.counts[c] for s in scores) for c in CODES}
    refl = total["SR"] + total["CR"]
    adh = sum(s.ratio.adherent for s in scores)
    non = sum(s.ratio.non_adherent for s in scores)
    return {
        "sessions": len(scores),
        "volleys": sum(s.n_volleys for s in scores),
        "utterances": sum(s.n_utterances for s in scores),
        "counts": total,
        "pct_cr": total["CR"] / refl if refl else None,
        "r_q": refl / total["Q"] if total["Q"] else None,
        "mi_adherent_ratio": adh / (adh + non) if adh + non else None,
        "ratio_adherent": adh,
        "ratio_non_adherent": non,
        "client_talk": _pooled_talk(scores),
    }


def _pooled_talk(scores: Sequence[SessionScores]) -> dict[str, Any] | None:
    talk = [s.client_talk for s in scores if s.client_talk is not None]
    if not talk:
        return None
    joined = [t for c in talk for t in ["change"] * c.change + ["sustain"] * c.sustain + ["neutral"] * c.neutral]
    return client_talk(joined).model_dump()  # type: ignore[union-attr]


def _same_definition(scores: Sequence[SessionScores]) -> None:
    defs = {s.ratio.formula for s in scores}
    if len(defs) > 1:
        raise MiLlmError(f"sessions scored under different MI-adherent ratio definitions: {sorted(defs)}")


# --- the side-by-side table -------------------------------------------------------------


@dataclass
class Cell:
    mean: float | None
    median: float | None
    q1: float | None
    q3: float | None
    n: int
    missing: int
    level: str | None

    def text(self, digits: int = 2) -> str:
        """mean, median and [q1-q3] on three lines, with the count of undefined sessions."""
        if self.mean is None:
            return "n/a" + (f"\n({self.missing} undefined)" if self.missing else "")
        f = f"{{:.{digits}f}}".format
        s = f"{f(self.mean)}\nmd {f(self.median)}\n[{f(self.q1)}-{f(self.q3)}]"
        return s + (f"\n{self.missing} undefined" if self.missing else "")


@dataclass
class Row:
    key: str
    label: str
    cells: dict[str, Cell]
    fair: float | None = None
    good: float | None = None
    # figure label -> (low, high, level) from the MI-LLM paper
    paper: dict[str, tuple[float, float, str | None]] = field(default_factory=dict)
    note: str | None = None


@dataclass
class ComparisonTable:
    """Systems (columns) x MITI scores (rows), beside the paper's figures and the thresholds."""

    systems: list[str]
    rows: list[Row]
    definition: str
    sessions: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "systems": self.systems,
            "sessions": self.sessions,
            "mi_adherent_ratio_definition": self.definition,
            "rows": [
                {
                    "key": r.key,
                    "label": r.label,
                    "fair": r.fair,
                    "good": r.good,
                    "note": r.note,
                    "cells": {s: vars(c) for s, c in r.cells.items()},
                    "paper": {k: {"low": lo, "high": hi, "level": lv} for k, (lo, hi, lv) in r.paper.items()},
                }
                for r in self.rows
            ],
        }

    def to_rich(self, title: str = "MITI 4.2.1 summary scores") -> Table:
        table = Table(
            title=title,
            caption=f"mean (median, IQR) over sessions; MI-adherent ratio = {self.definition}; "
            "[green]good[/] / [yellow]fair[/] / [red]below fair[/] against the manual's thresholds",
        )
        table.add_column("score", no_wrap=True)
        for s in self.systems:
            table.add_column(f"{s} (n={self.sessions[s]})", min_width=11, overflow="fold")
        table.add_column("MI-LLM paper", overflow="fold")
        table.add_column("fair / good", overflow="fold")
        for r in self.rows:
            cells = [_styled(c.text(), c.level) for c in r.cells.values()]
            paper = "\n".join(
                _styled(f"{_SHORT.get(k, k)} {lo:.2f}" if lo == hi else f"{_SHORT.get(k, k)} {lo:.2f}-{hi:.2f}", lv)
                for k, (lo, hi, lv) in r.paper.items()
            ) or (r.note or "")
            thr = "" if r.fair is None else f"{r.fair:g} / {r.good:g}"
            table.add_row(r.label, *cells, paper, thr)
        return table


_SHORT = {"real counselors": "real", "fine-tuned LLMs": "LLMs"}


def _styled(text: str, lv: str | None) -> str:
    color = {"good": "green", "fair": "yellow", "below fair": "red"}.get(lv or "")
    return f"[{color}]{text}[/]" if color else text


def comparison_table(systems: Mapping[str, Sequence[SessionScores]], *, paper: bool = True) -> ComparisonTable:
    """Side-by-side table of systems (e.g. 'model', 'reference') and the paper's figures."""
    if not systems:
        raise MiLlmError("no systems to compare")
    formulas = {s.ratio.formula for scores in systems.values() for s in scores}
    if len(formulas) > 1:
        raise MiLlmError(f"systems scored under different MI-adherent ratio definitions: {sorted(formulas)}")
    aggs = {name: aggregate(scores) for name, scores in systems.items()}
    rows = []
    for key in SCORE_KEYS:
        fair, good = THRESHOLDS.get(key, (None, None))
        cells = {
            name: Cell(
                **{k: agg[key][k] for k in ("mean", "median", "q1", "q3", "n", "missing")},
                level=level(key, agg[key]["mean"]),
            )
            for name, agg in aggs.items()
        }
        figs = (
            {
                label: (
                    lo,
                    hi,
                    level(key, hi)
                    if lo == hi or level(key, lo) == level(key, hi)
                    else f"{level(key, lo)} to {level(key, hi)}",
                )
                for label, (lo, hi) in PAPER_FIGURES.get(key, {}).items()
            }
            if paper
            else {}
        )
        rows.append(
            Row(
                key=key,
                label=SCORE_LABELS[key],
                cells=cells,
                fair=fair,
                good=good,
                paper=figs,
                note=PAPER_NOTES.get(key) if paper else None,
            )
        )
    return ComparisonTable(
        systems=list(systems),
        rows=rows,
        definition=next(iter(formulas)) if formulas else "",
        sessions={name: len(scores) for name, scores in systems.items()},
    )
