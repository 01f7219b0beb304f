"""Render ReportData into report/index.html (self-contained: CSS inline, figures as data URIs)."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from mi_llm.io import atomic_writer, write_json
from mi_llm.layout import ReportPaths
from mi_llm.report import figures
from mi_llm.report.data import PAPER_AUTOMATIC, PAPER_MITI, ReportData

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


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write index.html, the PNG figures and summary.json into `out_dir`; returns index.html."""
    out = ReportPaths(out_dir)
    figs = {
        "behaviour_counts": figures.behaviour_counts(data, out.figure("behaviour_counts")),
        "ratios": figures.ratios(data, out.figure("ratios")),
        "loss": figures.loss_curve(data, out.figure("loss")),
    }
    env = Environment(loader=PackageLoader("mi_llm.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
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
    )
    with atomic_writer(out.index) as f:
        f.write(html)
    write_json(out.summary, data.summary())
    return out.index
