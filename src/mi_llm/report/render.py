"""Render ReportData into report/index.html (self-contained: CSS inline, figures as data URIs)."""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from mi_llm.io import atomic_writer, write_json
from mi_llm.layout import ReportPaths, SimulatePaths
from mi_llm.report import figures
from mi_llm.report.data import PAPER_AUTOMATIC, PAPER_MITI, ReportData
from mi_llm.report.sessions import (
    STATE_MACHINE_NOTE,
    TOY_CLIENT_NOTE,
    Simulation,
    aggregate_table,
    read_simulation,
    session_rows,
    write_session_pages,
)

AUTO_METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")

# Table 2 rows: (key in aggregates, label, fair, good, higher is better)
MITI_ROWS: list[tuple[str, str, float | None, float | None]] = [
    ("cct", "Cultivating Change Talk", None, None),
    ("sst", "Softening Sustain Talk", None, None),
    ("partnership", "Partnership", None, None),
    ("empathy", "Empathy", None, None),
    ("technical", "Technical global", 3.0, 4.0),
    ("relational", "Relational global", 3.5, 4.0),
    ("pct_cr", "% Complex Reflections", 0.40, 0.50),
    ("r_q", "Reflection : Question", 1.0, 2.0),
    ("mia", "MI-adherent (count)", None, None),
    ("mina", "MI-non-adherent (count)", None, None),
    ("mi_adherent_ratio", "MI-adherent ratio", None, None),
    # client talk (Turn.talk, from the client-talk coder): what the counseling draws out
    ("change_share", "Client change talk / (change + sustain)", None, None),
    ("ct_st", "Client change talk : sustain talk", None, None),
]


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _level(v: Any, fair: float | None, good: float | None) -> str:
    if v is None or fair is None or good is None:
        return ""
    return "good" if v >= good else "fair" if v >= fair else "below"


def miti_table(data: ReportData) -> dict[str, Any]:
    systems = list(data.miti_aggregate)
    rows = []
    for key, label, fair, good in MITI_ROWS:
        cells = []
        for s in systems:
            agg = data.miti_aggregate[s].get(key, {})
            mean = agg.get("mean")
            text = _fmt(mean)
            if mean is not None and agg.get("median") is not None:
                text += f" (median {_fmt(agg['median'])}, IQR {_fmt(agg.get('q1'))}-{_fmt(agg.get('q3'))})"
            if agg.get("missing"):
                text += f" [{agg['missing']} undefined]"
            cells.append({"text": text, "level": _level(mean, fair, good)})
        paper = PAPER_MITI.get(key, {})
        rows.append(
            {
                "label": label,
                "cells": cells,
                "paper": "; ".join(f"{k} {v}" for k, v in paper.items()) or "",
                "thresholds": "" if fair is None else f"fair {fair:g} / good {good:g}",
            }
        )
    return {"systems": systems, "rows": rows}


def auto_table(data: ReportData) -> list[dict[str, Any]]:
    return [
        {
            "model": r.model,
            "language": r.language,
            "system": r.system,
            "n": r.n,
            "scores": [_fmt(r.scores.get(m)) for m in AUTO_METRICS],
            "paper": PAPER_AUTOMATIC["bleu-4"].get(r.system, ""),
        }
        for r in data.auto_rows
    ]


def following_table(data: ReportData) -> list[dict[str, Any]]:
    """One row per system x asked code: how often the coder heard the code asked for."""
    rows = []
    for label, result in data.code_following.items():
        for code, r in [*result["by_code"].items(), ("all", result["all"])]:
            rows.append(
                {
                    "system": label,
                    "strategy": result.get("strategy"),
                    "coder": result.get("coder"),
                    "code": code,
                    "asked": r["asked"],
                    "rate": _fmt(r["rate"]),
                    "present_rate": _fmt(r["present_rate"]),
                }
            )
    return rows


def _data_uri(path: Path | None) -> str | None:
    if path is None:
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _env() -> Environment:
    return Environment(loader=PackageLoader("mi_llm.report", "templates"), autoescape=select_autoescape(["html", "j2"]))


def sessions_section(
    simulations: Sequence[Simulation],
    index: Path,
    page_of: Callable[[Simulation, str], Path],
    figure: Path,
    env: Environment,
) -> dict[str, Any] | None:
    """The sessions section's context; writes each session's page and the trajectory figure."""
    if not simulations:
        return None
    page = env.get_template("session.html.j2")
    counselors = []
    for sim in simulations:
        write_session_pages(sim, lambda sid, sim=sim: page_of(sim, sid), page.render, index)  # type: ignore[misc]
        href = lambda sid, sim=sim: os.path.relpath(page_of(sim, sid), index.parent)  # noqa: E731
        counselors.append({"label": sim.label, "sessions": session_rows(sim, href)})
    outcomes = {s.label: list(s.outcomes.get("sessions", [])) for s in simulations}
    notes = [STATE_MACHINE_NOTE]
    caveats = sorted({s.outcomes.get("caveat", "") for s in simulations} - {""})
    return {
        "toy_client": TOY_CLIENT_NOTE if any(s.toy_client for s in simulations) else None,
        "table": aggregate_table(simulations),
        "figure": _data_uri(figures.trajectories(outcomes, figure)),
        "counselors": counselors,
        "notes": notes + caveats,
    }


def write_simulation_report(folder: str | Path, title: str | None = None) -> Path:
    """`mi-llm simulate`'s own report: DIR/report.html, DIR/sessions/<id>.html, the figure."""
    paths = SimulatePaths(Path(folder))
    sim = read_simulation(paths.root, title or str(paths.root))
    env = _env()
    section = sessions_section(
        [sim], paths.report, lambda _sim, sid: paths.session_page(sid), paths.figure("trajectories"), env
    )
    html = env.get_template("simulation.html.j2").render(name=sim.label, sessions=section, settings=sim.meta)
    with atomic_writer(paths.report) as f:
        f.write(html)
    return paths.report


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write index.html, the PNG figures and summary.json into `out_dir`; returns index.html."""
    out = ReportPaths(out_dir)
    figs = {
        "behaviour_counts": figures.behaviour_counts(data, out.figure("behaviour_counts")),
        "ratios": figures.ratios(data, out.figure("ratios")),
        "loss": figures.loss_curve(data, out.figure("loss")),
    }
    env = _env()
    section = sessions_section(
        list(data.simulations.values()),
        out.index,
        lambda sim, sid: out.session_page(sim.label, sid),
        out.figure("trajectories"),
        env,
    )
    html = env.get_template("index.html.j2").render(
        name=data.name,
        metrics=AUTO_METRICS,
        auto=auto_table(data),
        miti=miti_table(data),
        following=following_table(data),
        figures={k: _data_uri(v) for k, v in figs.items()},
        examples=data.examples,
        settings=data.settings,
        notes=data.notes,
        sessions=section,
    )
    with atomic_writer(out.index) as f:
        f.write(html)
    write_json(out.summary, data.summary())
    return out.index
