"""Gather a run directory's outputs into ReportData (the pipeline's last stage).

Every path comes from mi_llm.layout.RunPaths; miti.json is read through its schema
(mi_llm.miti.results.read_miti_scores).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mi_llm.io import iter_jsonl
from mi_llm.layout import RunPaths
from mi_llm.miti.results import read_miti_scores
from mi_llm.report.data import AutoRow, Example, ReportData
from mi_llm.report.sessions import Simulation, read_simulation

if TYPE_CHECKING:
    from mi_llm.config import ExperimentConfig

EXAMPLES_PER_LANGUAGE = 3


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def auto_rows(model: str, system: str, metrics: dict[str, Any]) -> list[AutoRow]:
    """One row per language present, plus an "all" row when there are several."""
    rows = []
    by_lang = metrics.get("by_language") or {}
    if by_lang:
        rows.append(AutoRow(model, system, "all", metrics["n_pairs"], metrics["paper"]))
        for lang, m in by_lang.items():
            rows.append(AutoRow(model, system, lang, m["n_pairs"], m["paper"]))
    else:
        lang = next(iter(metrics.get("languages") or {"all": 0}))
        rows.append(AutoRow(model, system, lang, metrics["n_pairs"], metrics["paper"]))
    return rows


def loss_curve(log_file: Path) -> list[tuple[int, float]]:
    if not log_file.is_file():
        return []
    return [(int(r["step"]), float(r["loss"])) for _, r in iter_jsonl(log_file) if r.get("loss") is not None]


def examples(paths: RunPaths, systems: list[tuple[str, str, str]], seed: int) -> list[Example]:
    """A few test rounds per language, with every system's reply beside the reference."""
    replies: dict[str, dict[str, str]] = {}
    for label, key, system in systems:
        for _, r in iter_jsonl(paths.predictions(key, system)):
            replies.setdefault(r["sample_id"], {})[label] = r["prediction"]
    by_lang: dict[str, list[dict[str, Any]]] = {}
    for _, s in iter_jsonl(paths.build.test_samples):
        if len(replies.get(s["sample_id"], {})) == len(systems):
            by_lang.setdefault(s["language"], []).append(s)
    rng = random.Random(seed)
    out = []
    for lang, samples in sorted(by_lang.items()):
        for s in rng.sample(samples, min(EXAMPLES_PER_LANGUAGE, len(samples))):
            out.append(Example(lang, s["sample_id"], s["query"], s["response"], replies[s["sample_id"]]))
    return out


def simulations(cfg: ExperimentConfig, paths: RunPaths) -> dict[str, Simulation]:
    """Each simulated counselor's sessions (the simulate stage), by its label."""
    return {
        label: read_simulation(paths.simulate(key, system).root, label)
        for label, key, system in cfg.simulated_systems()
    }


def collect(cfg: ExperimentConfig, paths: RunPaths) -> ReportData:
    systems = cfg.systems()
    data = ReportData(name=cfg.name)
    for _, key, system in systems:
        data.auto_rows += auto_rows(key, system, _read_json(paths.metrics(key, system)))
    miti_file = paths.miti_scores
    if cfg.miti.enabled and miti_file.is_file():
        miti = read_miti_scores(miti_file)
        for label, result in miti.systems.items():
            data.miti_sessions[label] = [s.report_dict() for s in result.sessions]
            data.miti_aggregate[label] = {k: stats.model_dump(mode="json") for k, stats in result.aggregate.items()}
        data.notes.append(
            f"MITI codes by the automatic coder {miti.coder!r}; see docs/miti-coder.md for its measured validity."
        )
        data.notes += miti.notes  # the coder's validity, why automatic globals are left out, undefined scores
    if cfg.train_enabled:
        for m in cfg.models:
            data.loss_curves[m.key] = loss_curve(paths.adapter(m.key).train_log)
    for label, key, system in systems:
        following = paths.code_following(key, system)
        if following.is_file():
            data.code_following[label] = _read_json(following)
    data.examples = examples(paths, systems, cfg.split.seed)
    data.simulations = simulations(cfg, paths)
    build = _read_json(paths.build.summary)
    data.settings = {
        "models": [m.model_dump() for m in cfg.models],
        "split": {k: build[k]["dialogues"] for k in ("train", "test")} | {"seed": build["seed"]},
        "samples": {k: build[k]["samples"] for k in ("train", "test")},
        "train": cfg.train.given(),
        "generation": cfg.generation.model_dump(),
    }
    return data
