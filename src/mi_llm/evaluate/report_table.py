"""A readable rich table of a metrics dict (as `compute_metrics` / `evaluate_file` return)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mi_llm.evaluate.extended import EXTENDED_METRICS
from mi_llm.evaluate.paper import PAPER_METRICS

# How each figure is shown: BLEU/ROUGE on 0-100, ratios on 0-1, lengths in tokens.
_FORMATS = {
    "sacrebleu": "{:.2f}",
    "distinct-1": "{:.4f}",
    "distinct-2": "{:.4f}",
    "mean-length": "{:.1f}",
    "mean-length-reference": "{:.1f}",
    "repetition-rate": "{:.4f}",
}


def _columns(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cols = [("all", metrics)]
    for lang, sub in metrics.get("by_language", {}).items():
        cols.append((lang, sub))
    return cols


def metrics_tables(metrics: dict[str, Any]) -> list[Table]:
    """Two tables, one per family, so a paper figure never sits in a column of ours:
    one row per figure, one column per language (plus `all`)."""
    cols = _columns(metrics)
    tables = []
    for family, title, keys in (
        ("paper", "paper-compatible (LLaMA-Factory's definition)", PAPER_METRICS),
        ("extended", "extended (better-founded; not comparable with the paper)", EXTENDED_METRICS),
    ):
        table = Table(title=title, title_justify="left")
        table.add_column("metric", no_wrap=True)
        for name, sub in cols:
            table.add_column(f"{name} (n={sub['n_pairs']:,})", justify="right", no_wrap=True)
        for key in keys:
            fmt = _FORMATS.get(key, "{:.4f}")
            table.add_row(key, *(fmt.format(sub[family][key]) for _, sub in cols))
        tables.append(table)
    return tables


def settings_lines(metrics: dict[str, Any]) -> list[str]:
    """Short lines about the input and how its predictions were generated."""
    lines = []
    source = metrics.get("input")
    if source:
        lines.append(f"input: {source['path']} ({source['format']} format)")
    gen = metrics.get("generation", "absent")
    if gen is None:
        lines.append("generation settings: not recorded in the predictions file")
    elif gen != "absent":
        lines.append(f"generation settings: {gen}")
    for key in ("model", "backend"):
        if key in metrics:
            lines.append(f"{key}: {metrics[key]}")
    if metrics.get("n_empty_predictions"):
        lines.append(f"empty predictions: {metrics['n_empty_predictions']}")
    lines.append(f"sacreBLEU: {metrics['sacrebleu']['signature']}")
    return lines
