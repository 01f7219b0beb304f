"""`mi-llm evaluate PREDICTIONS -o metrics.json`: BLEU-4/ROUGE as in the paper, and more."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

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
    code_following: bool = typer.Option(
        False,
        "--code-following",
        help="predictions made with --strategy: how often the MITI coder hears each asked code "
        "(code_following.json beside -o)",
    ),
    coder: str = typer.Option("default", "--coder", help="--code-following: the MITI coder (default: the shipped one)"),
    data: Path | None = typer.Option(
        None, "--data", help="--code-following: the test samples (or build folder), whose client turns the coder reads"
    ),
) -> None:
    """Score predictions against references: the paper's BLEU-4/ROUGE and the extended family."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mi_llm.evaluate.metrics import evaluate_file
    from mi_llm.evaluate.report_table import metrics_tables, settings_lines
    from mi_llm.io import check_writable
    from mi_llm.layout import CODE_FOLLOWING, METRICS

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
    if code_following:
        following_file = output.parent / CODE_FOLLOWING
        from mi_llm.miti.following import evaluate_following

        result = evaluate_following(predictions, following_file, coder, data)
        console.print(following_table(result))
        console.print(f"wrote {following_file}", highlight=False)


def following_table(result: dict) -> Table:
    table = Table(title=f"code-following ({result.get('strategy')}; coder {result.get('coder')})", title_justify="left")
    for col in ("asked", "replies", "coder heard it (one code)", "in some utterance"):
        table.add_column(col)
    rows = [*result["by_code"].items(), ("all", result["all"])]
    for code, r in rows:
        table.add_row(code, str(r["asked"]), _rate(r["rate"]), _rate(r["present_rate"]))
    return table


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
