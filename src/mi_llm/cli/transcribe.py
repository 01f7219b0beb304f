"""`mi-llm transcribe`: rewrite counseling dialogues into MI style with an LLM (resumable)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from mi_llm.cli.options import INT32_MAX, TIMEOUT_MAX, field_default, field_option
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console, setup_logging
from mi_llm.transcribe.config import TranscribeConfig, TranscribeGenerationConfig, ValidationConfig


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_cmd)


def transcribe_cmd(
    dialogues: Path = typer.Argument(..., help="dialogues JSONL to rewrite"),
    output: Path = typer.Option(..., "-o", "--output", help="MI dialogues JSONL, appended to (a rerun resumes)"),
    backend: str = field_option(TranscribeConfig, "backend"),
    model: str = field_option(TranscribeConfig, "model"),
    base_url: str | None = field_option(TranscribeConfig, "base_url"),
    api_key_env: str = field_option(TranscribeConfig, "api_key_env"),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder (local backends)"),
    concurrency: int = field_option(TranscribeConfig, "concurrency", le=INT32_MAX),
    rpm: int | None = field_option(TranscribeConfig, "rpm"),
    tpm: int | None = field_option(TranscribeConfig, "tpm"),
    max_retries: int = field_option(TranscribeConfig, "max_retries"),
    max_repairs: int = field_option(TranscribeConfig, "max_repairs"),
    timeout: float = field_option(TranscribeConfig, "timeout_s", "--timeout", le=TIMEOUT_MAX),
    limit: int | None = field_option(TranscribeConfig, "limit"),
    prices: Path | None = field_option(TranscribeConfig, "prices_path", "--prices"),
    cache: Path | None = field_option(TranscribeConfig, "cache_path", "--cache"),
    temperature: float = field_option(TranscribeGenerationConfig, "temperature"),
    max_tokens: int = field_option(TranscribeGenerationConfig, "max_tokens", le=INT32_MAX),
    max_tokens_param: str = field_option(TranscribeConfig, "max_tokens_param"),
    seed: int | None = field_option(TranscribeGenerationConfig, "seed", callback=seed_check),
    json_mode: bool = field_option(TranscribeGenerationConfig, "json_mode", "--json-mode/--no-json-mode"),
    min_client_similarity: float = field_option(ValidationConfig, "min_client_similarity"),
    allow_client_count_change: bool = typer.Option(
        not field_default(ValidationConfig, "keep_client_count"),
        "--allow-client-count-change",
        help="accept answers with a different number of client turns",
    ),
    id_suffix: str = field_option(TranscribeConfig, "id_suffix"),
    retry_failed: bool = field_option(TranscribeConfig, "retry_failed", "--retry-failed"),
    code: bool = typer.Option(
        False, "--code", help="MITI-code the rewritten dialogues and report %CR, R:Q, MI-adherent ratio"
    ),
    coder: str = typer.Option("default", help="MITI coder for --code"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging"),
) -> None:
    """Rewrite dialogues into Motivational Interviewing style with an LLM, validated and resumable."""
    from mi_llm.miti.coders import load_coder
    from mi_llm.transcribe import transcribe_file

    setup_logging(verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress bar
    coder_impl = load_coder(coder) if code else None  # fail before paying for anything
    settings = TranscribeConfig(
        backend=backend,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        max_tokens_param=max_tokens_param,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        max_retries=max_retries,
        max_repairs=max_repairs,
        timeout_s=timeout,
        limit=limit,
        id_suffix=id_suffix,
        retry_failed=retry_failed,
        cache_path=cache,
        prices_path=prices,
        gen=TranscribeGenerationConfig(temperature=temperature, max_tokens=max_tokens, seed=seed, json_mode=json_mode),
        validation=ValidationConfig(
            keep_client_count=not allow_client_count_change, min_client_similarity=min_client_similarity
        ),
        backend_opts={"adapter": str(adapter)} if adapter else {},
    )
    try:
        stats = _run_with_progress(dialogues, output, settings, transcribe_file)
    except KeyboardInterrupt:
        console.print(f"interrupted: what was finished is in {output}; run the same command again to resume")
        raise
    _print_summary(stats, output)
    if coder_impl is not None:
        from mi_llm.transcribe.quality import code_output

        _print_quality(code_output(output, coder, coder_impl))


def _run_with_progress(dialogues, output, settings, transcribe_file):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("transcribe"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn(
            "ok {task.fields[ok]} · failed {task.fields[failed]} · cached {task.fields[cached]} · {task.fields[cost]}"
        ),
        console=console,
        transient=False,
    )
    task = progress.add_task("transcribe", total=None, ok=0, failed=0, cached=0, cost="$0.0000")

    def on_start(stats) -> None:
        # Shown only once the inputs are read and checked: an input error stays one clean line.
        if stats.already_done or stats.already_failed:
            console.print(
                f"resuming: {stats.already_done} already written, {stats.already_failed} already in the "
                f"failure report; {stats.todo} to do"
            )
        progress.update(task, total=stats.todo)
        progress.start()

    def on_progress(stats) -> None:
        progress.update(
            task,
            completed=stats.finished,
            ok=stats.ok,
            failed=stats.failed,
            cached=stats.from_cache,
            cost=stats.cost_display,
        )

    try:
        return transcribe_file(dialogues, output, settings, on_start=on_start, on_progress=on_progress)
    finally:
        progress.stop()


def _print_summary(stats, output: Path) -> None:
    from rich.table import Table

    from mi_llm.transcribe.store import failures_path

    t = Table(title="transcribe", show_header=False)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.failure_kinds.items()))
    rows = [
        ("ok", f"{stats.ok:,}"),
        ("failed", f"{stats.failed:,}" + (f" ({kinds})" if kinds else "")),
        ("from cache", f"{stats.from_cache:,}"),
        ("already done / failed before", f"{stats.already_done:,} / {stats.already_failed:,}"),
        ("requests (retries, repairs)", f"{stats.requests:,} ({stats.retries:,}, {stats.repairs:,})"),
        ("cache hits", f"{stats.cache_hits:,}"),
        (
            "tokens in / out (paid)",
            f"{stats.prompt_tokens:,} / {stats.completion_tokens:,}"
            + (f" ({stats.usage_estimated_calls} estimated)" if stats.usage_estimated_calls else ""),
        ),
        ("tokens in / out (cache)", f"{stats.cached_prompt_tokens:,} / {stats.cached_completion_tokens:,}"),
        ("cost", stats.cost_display + (f", saved ${stats.saved_cost:.4f} by the cache" if stats.saved_cost else "")),
        (
            "time",
            f"{stats.elapsed_s:.1f} s"
            + (f" ({stats.rate_limit_wait_s:.1f} s rate-limited)" if stats.rate_limit_wait_s else ""),
        ),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(
        f"wrote {output}" + (f"; failures in {failures_path(output)}" if stats.failed or stats.already_failed else "")
    )


def _print_quality(scores) -> None:
    from rich.table import Table

    def fmt(v: object, pct: bool = False) -> str:
        if v is None:
            return "n/a (undefined)"
        return f"{v:.0%}" if pct else f"{v:.2f}"

    (rewrites,) = scores.systems.values()  # code_output scores one system: the output file
    t = Table(title=f"MITI ({rewrites.n_sessions} rewritten dialogues, coder {scores.coder})")
    for col in ("score", "pooled", "per-session mean", "median"):
        t.add_column(col)
    for key, label, pct in (
        ("pct_cr", "%CR", True),
        ("r_q", "R:Q", False),
        ("mi_adherent_ratio", "MI-adherent ratio", True),
    ):
        s = rewrites.aggregate[key]
        t.add_row(label, fmt(getattr(rewrites.pooled, key), pct), fmt(s.mean, pct), fmt(s.median, pct))
    console.print(t)
    console.print(f"MI-adherent ratio = {scores.mi_adherent_ratio.formula}; coded dialogues in {rewrites.files[0]}")
