"""`mi-llm evaluate PREDICTIONS -o metrics.json`: BLEU-4/ROUGE as in the paper, and more."""

from __future__ import annotations

from pathlib import Path

import typer

from mi_llm.cli.options import number
from mi_llm.console import console


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)


def evaluate_cmd(
    predictions: Path = typer.Argument(
        ...,
        help="predictions JSONL: ours (prediction, reference) or LLaMA-Factory's generated_predictions.jsonl (predict, label)",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="metrics JSON to write (default: metrics.json beside PREDICTIONS)"
    ),
    per_sample: Path | None = typer.Option(None, "--per-sample", help="also write one JSONL line of scores per pair"),
    language: str | None = typer.Option(
        None, "--language", help="zh | en for every pair (default: the file's language field, else detected)"
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="processes (default: 2 from 2,000 pairs on)", callback=number(ge=1)
    ),
    reference_impl: bool = typer.Option(
        False,
        "--reference-impl",
        help="compute with the reference libraries as LLaMA-Factory calls them (slow; for audits)",
    ),
) -> None:
    """Score predictions against references: the paper's BLEU-4/ROUGE and the extended family."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mi_llm.evaluate.metrics import evaluate_file
    from mi_llm.evaluate.report_table import metrics_tables, settings_lines
    from mi_llm.io import check_writable
    from mi_llm.layout import METRICS

    output = output or predictions.parent / METRICS
    # Before the scoring, so that a typo in a path fails at once, naming its option.
    check_writable(output, "-o")
    if per_sample is not None:
        check_writable(per_sample, "--per-sample")
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("scoring", total=None)
        result = evaluate_file(
            predictions,
            output,
            per_sample=per_sample,
            language=language,
            workers=workers,
            implementation="reference" if reference_impl else "fast",
            progress=lambda n: bar.advance(task, n),
            on_loaded=lambda n: bar.update(task, total=n),
        )
    for table in metrics_tables(result):
        console.print(table)
    for line in settings_lines(result):
        console.print(line, highlight=False, markup=False)
    console.print(f"wrote {output}" + (f" and {per_sample}" if per_sample else ""), highlight=False)
