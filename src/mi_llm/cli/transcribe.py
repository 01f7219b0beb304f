"""`mi-llm transcribe`: rewrite counseling dialogues into MI style with an LLM (resumable)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from mi_llm.cli.options import INT32_MAX, TIMEOUT_MAX, number, seed as seed_check
from mi_llm.console import console, setup_logging


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_cmd)


def transcribe_cmd(
    dialogues: Path = typer.Argument(..., help="dialogues JSONL to rewrite"),
    output: Path = typer.Option(..., "-o", "--output", help="MI dialogues JSONL, appended to (a rerun resumes)"),
    backend: str = typer.Option("openai", help="openai | hf | llamacpp | vllm"),
    model: str = typer.Option("gpt-4o", help="model name (served model name for openai; gemma-3-270m embedded)"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server (default $OPENAI_BASE_URL or api.openai.com)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the API key"),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder (local backends)"),
    concurrency: int = typer.Option(4, help="dialogues in flight at once (local backends: batch size)", callback=number(ge=1, le=INT32_MAX)),
    # unset = no limit; a negative --rpm made the rate limiter index past its window (IndexError)
    rpm: Optional[int] = typer.Option(None, help="requests per minute (client-side limit)", callback=number(ge=1)),
    tpm: Optional[int] = typer.Option(None, help="tokens per minute (client-side limit)", callback=number(ge=1)),
    # as miti code --retries; the back-off's 2**attempt must also stay within a float
    max_retries: int = typer.Option(6, help="retries of one request on 429, 5xx and timeouts", callback=number(ge=0, le=100)),
    max_repairs: int = typer.Option(2, help="re-asks with the validation error, per dialogue", callback=number(ge=0, le=100)),
    timeout: float = typer.Option(120.0, help="seconds per request", callback=number(gt=0, le=TIMEOUT_MAX)),
    limit: Optional[int] = typer.Option(None, help="only the first N input dialogues", callback=number(ge=1)),
    prices: Optional[Path] = typer.Option(None, help="price table, YAML or JSON: {model: {input: USD/1M, output: USD/1M}}"),
    cache: Optional[Path] = typer.Option(None, help="SQLite call cache (default <output>.cache.sqlite)"),
    temperature: float = typer.Option(0.7, help="sampling temperature (0 = greedy)", callback=number(ge=0)),
    max_tokens: int = typer.Option(4096, help="longest answer, in tokens", callback=number(ge=1, le=INT32_MAX)),
    max_tokens_param: str = typer.Option("max_tokens", help="openai: request field for --max-tokens (max_completion_tokens for newer models)"),
    seed: Optional[int] = typer.Option(None, help="sampling seed, where the backend honours one", callback=seed_check),
    json_mode: bool = typer.Option(True, "--json-mode/--no-json-mode", help="ask the openai server for a JSON object answer"),
    min_client_similarity: float = typer.Option(0.5, help="how close rewritten client turns must stay to the originals (0 = off)", callback=number(ge=0, le=1)),
    allow_client_count_change: bool = typer.Option(False, "--allow-client-count-change", help="accept answers with a different number of client turns"),
    id_suffix: str = typer.Option("", help="appended to each output id (default: ids are kept)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="try the failure report's dialogues again, bypassing the cache"),
    code: bool = typer.Option(False, "--code", help="MITI-code the rewritten dialogues and report %CR, R:Q, MI-adherent ratio"),
    coder: str = typer.Option("default", help="MITI coder for --code"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging"),
) -> None:
    """Rewrite dialogues into Motivational Interviewing style with an LLM, validated and resumable."""
    from mi_llm.transcribe import GenSettings, TranscribeSettings, ValidationSettings, transcribe_file
    from mi_llm.miti.coders import load_coder

    setup_logging(verbose)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress bar
    coder_impl = load_coder(coder) if code else None  # fail before paying for anything
    settings = TranscribeSettings(
        backend=backend, model=model, base_url=base_url, api_key_env=api_key_env, max_tokens_param=max_tokens_param,
        concurrency=concurrency,
        rpm=rpm, tpm=tpm, max_retries=max_retries, max_repairs=max_repairs, timeout_s=timeout, limit=limit,
        id_suffix=id_suffix, retry_failed=retry_failed, cache_path=cache, prices_path=prices,
        gen=GenSettings(temperature=temperature, max_tokens=max_tokens, seed=seed, json_mode=json_mode),
        validation=ValidationSettings(keep_client_count=not allow_client_count_change,
                                      min_client_similarity=min_client_similarity),
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


def _run_with_progress(dialogues, output, settings, transcribe_file):  # type: ignore[no-untyped-def]
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(
        SpinnerColumn(), TextColumn("transcribe"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]} · failed {task.fields[failed]} · cached {task.fields[cached]} · {task.fields[cost]}"),
        console=console, transient=False,
    )
    task = progress.add_task("transcribe", total=None, ok=0, failed=0, cached=0, cost="$0.0000")

    def on_start(stats) -> None:  # type: ignore[no-untyped-def]
        # Shown only once the inputs are read and checked: an input error stays one clean line.
        if stats.already_done or stats.already_failed:
            console.print(f"resuming: {stats.already_done} already written, {stats.already_failed} already in the "
                          f"failure report; {stats.todo} to do")
        progress.update(task, total=stats.todo)
        progress.start()

    def on_progress(stats) -> None:  # type: ignore[no-untyped-def]
        progress.update(task, completed=stats.finished, ok=stats.ok, failed=stats.failed,
                        cached=stats.from_cache, cost=stats.cost_display)

    try:
        return transcribe_file(dialogues, output, settings, on_start=on_start, on_progress=on_progress)
    finally:
        progress.stop()


def _print_summary(stats, output: Path) -> None:  # type: ignore[no-untyped-def]
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
        ("tokens in / out (paid)", f"{stats.prompt_tokens:,} / {stats.completion_tokens:,}"
         + (f" ({stats.usage_estimated_calls} estimated)" if stats.usage_estimated_calls else "")),
        ("tokens in / out (cache)", f"{stats.cached_prompt_tokens:,} / {stats.cached_completion_tokens:,}"),
        ("cost", stats.cost_display + (f", saved ${stats.saved_cost:.4f} by the cache" if stats.saved_cost else "")),
        ("time", f"{stats.elapsed_s:.1f} s" + (f" ({stats.rate_limit_wait_s:.1f} s rate-limited)" if stats.rate_limit_wait_s else "")),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    console.print(f"wrote {output}" + (f"; failures in {failures_path(output)}" if stats.failed or stats.already_failed else ""))


def _print_quality(result: dict) -> None:  # type: ignore[type-arg]
    from rich.table import Table

    def fmt(v: object, pct: bool = False) -> str:
        if v is None:
            return "n/a (undefined)"
        return f"{v:.0%}" if pct else f"{v:.2f}"  # type: ignore[str-format]

    pooled = result.get("pooled") or {}
    per = result.get("per_session") or {}
    t = Table(title=f"MITI ({result.get('sessions', 0)} rewritten dialogues, coder {result.get('coder')})")
    for col in ("score", "pooled", "per-session mean", "median"):
        t.add_column(col)
    for key, label, pct in (("pct_cr", "%CR", True), ("r_q", "R:Q", False), ("mi_adherent_ratio", "MI-adherent ratio", True)):
        s = per.get(key) or {}
        t.add_row(label, fmt(pooled.get(key), pct), fmt(s.get("mean"), pct), fmt(s.get("median"), pct))
    console.print(t)
    if result.get("ratio_definition"):
        console.print(f"MI-adherent ratio = {result['ratio_definition']}; coded dialogues in {result.get('coded')}")
