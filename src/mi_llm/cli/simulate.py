"""`mi-llm simulate`: whole MI sessions between a counselor and simulated clients."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError

from mi_llm.cli.options import field_option
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console
from mi_llm.errors import MiLlmError
from mi_llm.layout import SimulatePaths
from mi_llm.simulate.config import SimulateConfig

C = SimulateConfig


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)


def simulate_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="folder for sessions.jsonl, outcomes.json and report.html"),
    counselor: str = field_option(C, "counselor", "--counselor"),
    adapter: str | None = field_option(C, "counselor_adapter", "--adapter"),
    backend: str = field_option(C, "counselor_backend", "--backend"),
    counselor_url: str | None = field_option(C, "counselor_url", "--counselor-url"),
    client: str = field_option(C, "client", "--client"),
    client_backend: str = field_option(C, "client_backend", "--client-backend"),
    client_url: str | None = field_option(C, "client_url", "--client-url"),
    personas: str = field_option(C, "personas", "--personas"),
    language: str | None = field_option(C, "language", "--language"),
    sessions: int = field_option(C, "sessions", "--sessions"),
    max_rounds: int = field_option(C, "max_rounds", "--max-rounds"),
    seed: int = field_option(C, "seed", "--seed", callback=seed_check),
    counselor_max_tokens: int = field_option(C, "counselor_max_tokens", "--counselor-max-tokens"),
    client_max_tokens: int = field_option(C, "client_max_tokens", "--client-max-tokens"),
    client_temperature: float = field_option(C, "client_temperature", "--client-temperature"),
    retries: int = field_option(C, "retries", "--retries"),
    coder: str = field_option(C, "coder", "--coder"),
    client_coder: str = field_option(C, "client_coder", "--client-coder"),
    strategy: str | None = field_option(C, "strategy", "--strategy"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start over instead of resuming"),
) -> None:
    """Simulate whole sessions (resumable), code them, write their outcomes and report.html."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mi_llm.build.strategy import Strategy
    from mi_llm.report.render import write_simulation_report
    from mi_llm.simulate.cards import load_personas
    from mi_llm.simulate.stage import run_simulate

    if language not in (None, "zh", "en"):
        raise MiLlmError(f"--language must be zh or en (got {language})")
    if strategy is not None:
        Strategy.parse(strategy)  # a bad code or policy file: one line naming it, before anything loads
    try:
        config = SimulateConfig(
            counselor=counselor,
            counselor_adapter=adapter,
            counselor_backend=backend,
            counselor_url=counselor_url,
            client=client,
            client_backend=client_backend,
            client_url=client_url,
            personas=personas,
            language=language,  # checked above: zh | en | None
            sessions=sessions,
            max_rounds=max_rounds,
            seed=seed,
            counselor_max_tokens=counselor_max_tokens,
            client_max_tokens=client_max_tokens,
            client_temperature=client_temperature,
            retries=retries,
            coder=coder,
            client_coder=client_coder,
            strategy=strategy,
        )
    except ValidationError as e:  # the option checks above cover the ranges: this is a bug guard
        raise MiLlmError(f"simulate: {e.errors()[0]['msg']}") from None
    cards = load_personas(config.personas)  # every card checked before anything runs
    with Progress(
        TextColumn("simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("round {task.fields[round]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("simulate", total=config.sessions, round=0)

        def on_progress(event: str, n: int) -> None:
            if event == "session":
                bar.update(task, advance=n)
            else:
                bar.update(task, round=bar.tasks[0].fields["round"] + n)

        result, report = run_simulate(config, cards, output, overwrite=overwrite, progress=on_progress)
    counselor_label = config.counselor_url or config.counselor
    if config.counselor_adapter:
        counselor_label += f" + {config.counselor_adapter}"
    if config.strategy:
        counselor_label += f" (strategy {config.strategy})"
    page = write_simulation_report(output, title=counselor_label)
    print_summary(report["summary"])
    fidelity = SimulatePaths(output).fidelity
    if fidelity.is_file():
        print_fidelity(json.loads(fidelity.read_text(encoding="utf-8")))
    console.print(
        f"wrote {result.output} ({result.sessions} sessions: {result.written_now} now, {result.resumed} resumed, "
        f"{len(result.failed)} failed), {SimulatePaths(output).outcomes} and {page} in {result.seconds:.1f} s"
    )
    for f in result.failed:
        console.print(f"failed: {f['id']} after {f['rounds']} rounds: {f['error']}")


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title="simulated sessions")
    for col in ("sessions", "failed", "success", "rounds", "R:Q", "%CR", "MI-adherent", "change talk", "final stages"):
        table.add_column(col)
    stages = ", ".join(f"{k[:4]} {v}" for k, v in summary["final_stages"].items())
    table.add_row(
        str(summary["sessions"]),
        str(summary["failed"]),
        _fmt(summary["success_rate"], pct=True),
        _fmt(summary["mean_rounds"]),
        _fmt(summary["mean_r_q"]),
        _fmt(summary["mean_pct_cr"], pct=True),
        _fmt(summary["mean_mi_adherent_ratio"], pct=True),
        _fmt(summary["mean_change_share"], pct=True),
        stages,
    )
    console.print(table)


def print_fidelity(report: dict) -> None:
    """The simulated clients beside the real ones of their language (fidelity.json)."""
    from rich.table import Table

    table = Table(title="simulator fidelity: simulated vs real clients (one client-talk coder)")
    # change then sustain: after change talk, the next non-neutral turn is sustain talk
    for col in ("clients", "lang", "turns", "median length", "change", "sustain", "ch->sus", "1st change"):
        table.add_column(col, no_wrap=col == "clients")

    def row(name: str, lang: str, p: dict) -> None:
        talk = p["talk"]
        table.add_row(
            name,
            lang,
            str(p["client_turns"]),
            f"{p['length']['median']:g} {p['length_unit']}" if p["length"]["median"] is not None else "-",
            _fmt(talk["shares"]["change"], pct=True),
            _fmt(talk["shares"]["sustain"], pct=True),
            _fmt(talk["change_then_sustain"], pct=True),
            "-" if talk["first_change_round"]["median"] is None else f"{talk['first_change_round']['median']:g}",
        )

    for lang, p in report["simulated"].items():
        row("simulated", lang, p)
        for name, ref in report["reference"].get("corpora", {}).items():
            if ref["language"] == lang:
                row(name, lang, ref)
    console.print(table)
    for lang, p in report["simulated"].items():
        stage = p["stage"]
        console.print(
            f"simulated {lang}: stage moved back in {_fmt(stage['sessions_moving_back'], pct=True)} of sessions, "
            f"resolved (plan) {_fmt(stage['resolved'], pct=True)}, median rounds to the plan "
            f"{_fmt(stage['rounds_to_plan']['median'])}"
        )
