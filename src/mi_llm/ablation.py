"""`mi-llm run ABLATION.yaml`: one experiment run arm by arm, each arm the same experiment
config with a few settings changed, and one table that compares the arms.

An ablation file names a `base` experiment config (a path relative to the ablation file)
and its `arms`: a label each and the settings it changes (`set:`, merged into the base
config; lists are replaced). Each arm is an ordinary run directory (`<run dir>/<label>/`,
resumable like any run); the table (`ablation.json`, `ablation.html`) holds, per arm and
system, BLEU-4 / ROUGE-L / distinct-2, the pooled MITI figures, code-following where the
system was steered, and each MITI figure's difference from the reference arm (the first
unless `reference` names one) with a bootstrap 95% interval over sessions
(mi_llm.miti.compare). Every MITI figure comes from the arms' own miti.json: the coder the
experiment names graded them all.
"""

from __future__ import annotations

import copy
import html
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mi_llm.config import ExperimentConfig, load_config
from mi_llm.errors import InputError
from mi_llm.io import atomic_writer, write_json
from mi_llm.layout import AblationPaths, RunPaths

ARMS_KEY = "arms"


class AblationArm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the arm's name and its run folder")
    set: dict[str, Any] = Field(default_factory=dict, description="settings changed from the base config")


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: str = Field(description="the experiment config every arm starts from, relative to this file")
    arms: list[AblationArm] = Field(min_length=2)
    reference: str | None = Field(None, description="the arm the others are compared with (default: the first)")
    resamples: int = Field(2000, ge=100, description="bootstrap resamples of each difference")

    @model_validator(mode="after")
    def _labels(self) -> AblationConfig:
        labels = [a.label for a in self.arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"arm labels must be unique: {labels}")
        if self.reference is not None and self.reference not in labels:
            raise ValueError(f"reference {self.reference!r} is not an arm ({', '.join(labels)})")
        return self

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms[0].label


def is_ablation(path: str | Path) -> bool:
    """Whether a config file is an ablation (it has `arms:`) rather than one experiment."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # load_config reports it
    return isinstance(raw, dict) and ARMS_KEY in raw


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_ablation(path: str | Path) -> tuple[AblationConfig, dict[str, ExperimentConfig]]:
    """The ablation and each arm's validated experiment config, by label."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        ab = AblationConfig.model_validate(raw)
    except yaml.YAMLError as e:
        raise InputError(path, f"invalid YAML: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(path, f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    base_file = (path.parent / ab.base).resolve()
    load_config(base_file)  # its own errors, located in its own file
    base = yaml.safe_load(base_file.read_text(encoding="utf-8"))
    arms = {}
    for arm in ab.arms:
        merged = merge(base, arm.set)
        merged["name"] = f"{ab.name}-{arm.label}"
        try:
            arms[arm.label] = ExperimentConfig.model_validate(merged)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise InputError(path, f"arm {arm.label!r}: {where}: {first['msg']}") from None
    return ab, arms


def run_ablation(path: str | Path, run_dir: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run every arm (each resumes like any run), then write and return the table."""
    from mi_llm.layout import default_run_dir
    from mi_llm.pipeline import run_experiment

    ab, arms = load_ablation(path)
    folder = AblationPaths(run_dir or default_run_dir(ab.name))
    for label, cfg in arms.items():
        run_experiment(cfg, folder.arm(label).root, force=force)
    table = ablation_table(ab, arms, folder)
    write_json(folder.table, table)
    write_ablation_html(table, folder.index)
    return table


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ablation_table(ab: AblationConfig, arms: dict[str, ExperimentConfig], folder: AblationPaths) -> dict[str, Any]:
    from mi_llm.miti.compare import POOLED, bootstrap_difference, pooled_figures
    from mi_llm.miti.results import read_miti_scores

    rows: list[dict[str, Any]] = []
    sessions: dict[tuple[str, str], list[Any]] = {}
    coders = set()
    for label, cfg in arms.items():
        paths: RunPaths = folder.arm(label)
        miti = read_miti_scores(paths.miti_scores) if cfg.miti.enabled and paths.miti_scores.is_file() else None
        if miti is not None:
            coders.add(miti.coder)
        for system_label, key, system in cfg.systems():
            metrics = _read(paths.metrics(key, system)) or {}
            row: dict[str, Any] = {
                "arm": label,
                "system": system,
                "label": system_label,
                "strategy": cfg.strategy_of(system),
                "pairs": metrics.get("n_pairs"),
                "bleu-4": (metrics.get("paper") or {}).get("bleu-4"),
                "rouge-l": (metrics.get("paper") or {}).get("rouge-l"),
                "distinct-2": (metrics.get("extended") or {}).get("distinct-2"),
            }
            if miti is not None and system_label in miti.systems:
                found = miti.systems[system_label].sessions
                sessions[(label, system)] = found
                row.update(sessions=len(found), **pooled_figures(found))
            following = _read(paths.code_following(key, system))
            if following is not None:
                row["code_following"] = following["all"]["rate"]
                row["code_following_by_code"] = {c: r["rate"] for c, r in following["by_code"].items()}
                row["with_code"], row["replies"] = following.get("with_code"), following.get("replies")
            rows.append(row)
    ref = ab.reference_arm
    for row in rows:
        if row["arm"] == ref or (row["arm"], row["system"]) not in sessions:
            continue
        # the reference arm's system of the same name, else its fine-tuned one
        if (ref, row["system"]) in sessions:
            other: str | None = row["system"]
        else:
            other = "finetuned" if row["system"] != "base" and (ref, "finetuned") in sessions else None
        if other is None:
            continue
        row["compared_with"] = f"{ref} {other}"
        row["differences"] = {
            key: bootstrap_difference(sessions[(ref, other)], sessions[(row["arm"], row["system"])], key, ab.resamples)
            for key in POOLED
        }
    return {
        "name": ab.name,
        "reference": ref,
        "coder": sorted(c for c in coders if c is not None),
        "pooled": {key: label for key, (label, _) in POOLED.items()},
        "rows": rows,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def table_lines(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells as text (the HTML page and the terminal show the same)."""
    pooled = table["pooled"]
    header = ["arm", "system", "strategy", "pairs", "BLEU-4", "ROUGE-L", "distinct-2", "sessions"]
    header += list(pooled.values()) + ["code-following"] + [f"d {v} [95% CI]" for v in pooled.values()]
    cells = []
    for r in table["rows"]:
        line = [r["arm"], r["system"], r.get("strategy") or "", _fmt(r.get("pairs"))]
        line += [_fmt(r.get(k)) for k in ("bleu-4", "rouge-l", "distinct-2", "sessions")]
        line += [_fmt(r.get(k)) for k in pooled]
        following = _fmt(r.get("code_following"))
        if r.get("strategy") == "model" and r.get("replies"):  # how many replies opened with a tag at all
            following += f" ({r.get('with_code')}/{r['replies']} tagged)"
        line.append(following)
        for k in pooled:
            d = (r.get("differences") or {}).get(k)
            if not d or d["difference"] is None:
                line.append("")
            else:
                ci = "" if d["low"] is None else f" [{d['low']:+.2f}, {d['high']:+.2f}]"
                line.append(f"{d['difference']:+.2f}{ci}")
        cells.append(line)
    return header, cells


def write_ablation_html(table: dict[str, Any], path: Path) -> None:
    header, cells = table_lines(table)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>" for line in cells)
    coder = ", ".join(table["coder"]) or "none (MITI off)"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mi-llm ablation: {esc(table["name"])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:4px 8px}}th{{background:#f3f3f3}}
.note{{color:#555;font-size:12px}}</style></head><body>
<h1>mi-llm ablation: {esc(table["name"])}</h1>
<table id="ablation-table"><tr>{head}</tr>
{body}
</table>
<p class="note">MITI figures pooled over each system's test sessions (counts summed), graded by the coder
{esc(coder)}. d: difference from the reference arm {esc(table["reference"])} (its system of the same name,
else its fine-tuned one), with a bootstrap 95% percentile interval over sessions. Code-following: the share
of steered replies whose one code, as the coder heard it, is the code asked for (or written by the model).
BLEU-4 / ROUGE-L: the paper's definitions (x100). Each arm's full report: &lt;arm&gt;/report/index.html.</p>
</body></html>
"""
    with atomic_writer(path) as f:
        f.write(page)


def print_ablation(table: dict[str, Any]) -> None:
    from rich.table import Table

    from mi_llm.console import console

    header, cells = table_lines(table)
    t = Table(title=f"{table['name']}: arms side by side (coder {', '.join(table['coder']) or 'none'})")
    for h in header:
        t.add_column(h)
    for line in cells:
        t.add_row(*line)
    console.print(t)
