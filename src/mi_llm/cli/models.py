"""`mi-llm predict` and `mi-llm models ...`: resolve models, generate test-set predictions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from mi_llm.cli.options import (
    INT32_MAX,
    field_default,
    field_option,
    llamacpp_parallel_option,
    llamacpp_threads_option,
    number,
)
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console
from mi_llm.evaluate.config import PredictConfig
from mi_llm.llm.backends.config import OpenAIConfig
from mi_llm.llm.resolve import DEFAULT_MODEL

models_app = typer.Typer(
    help="Models: list the known names, prepare (convert) the embedded model.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("predict")(predict_cmd)


@models_app.command("list")
def list_cmd() -> None:
    """Known model names and what they resolve to."""
    from mi_llm.llm.home import mi_llm_home
    from mi_llm.llm.resolve import KNOWN_MODELS

    table = Table(title=f"models (cache: {mi_llm_home()})")
    for col in ("name", "resolves to", "family / notes"):
        table.add_column(col)
    converted = sorted((mi_llm_home() / "models").glob(f"{DEFAULT_MODEL}-*/config.json"))
    where = str(converted[-1].parent) if converted else "not converted yet (mi-llm models prepare)"
    table.add_row(DEFAULT_MODEL + " (default)", where, "gemma; embedded GGUF (Q4_K_M), converted once")
    for name, hub in sorted(KNOWN_MODELS.items()):
        table.add_row(name, hub, "Hugging Face cache or hub")
    table.add_row("org/name", "any Hugging Face id", "family from config.json")
    table.add_row("PATH", "a local model folder with config.json", "its own chat template, else its family's")
    console.print(table)


@models_app.command("prepare")
def prepare_cmd(
    model: str = typer.Argument(DEFAULT_MODEL, help="model name, HF id or folder"),
    force: bool = typer.Option(False, "--force", help="convert the embedded model again"),
) -> None:
    """Resolve a model (converting the embedded one once) and print where it lies."""
    from mi_llm.llm.resolve import prepare_embedded, resolve_model

    rm = prepare_embedded(force=force) if model == DEFAULT_MODEL else resolve_model(model)
    typer.echo(json.dumps(rm.describe(), indent=2))


def predict_cmd(
    data: Path = typer.Option(..., "--data", help="samples.test.jsonl, or a build folder"),
    output: Path = typer.Option(..., "-o", "--output", help="predictions JSONL to write"),
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--model",
        help="model name, HF id, folder, or .gguf (llamacpp); the served model name for openai",
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter folder (from mi-llm train)"),
    backend: str = typer.Option("hf", "--backend", help="hf | llamacpp | openai | vllm"),
    preset: str = field_option(PredictConfig, "preset", "--preset"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="override the preset's", callback=number(ge=1, le=INT32_MAX)
    ),
    temperature: float | None = typer.Option(None, "--temperature", callback=number(ge=0)),
    top_p: float | None = typer.Option(None, "--top-p", callback=number(gt=0, le=1)),
    top_k: int | None = typer.Option(None, "--top-k", callback=number(ge=0, le=INT32_MAX)),
    repetition_penalty: float | None = typer.Option(None, "--repetition-penalty", callback=number(gt=0)),
    seed: int | None = typer.Option(None, "--seed", help="sampling seed (default 42)", callback=seed_check),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="conversations per generate call, written together (default: hf 16; llamacpp 4 x parallel; openai 4 x concurrency; vllm 256)",
        callback=number(ge=1, le=INT32_MAX),
    ),
    limit: int | None = typer.Option(None, "--limit", help="only the first N samples", callback=number(ge=1)),
    overwrite: bool = typer.Option(False, "--overwrite", help="start over instead of resuming"),
    device: str | None = typer.Option(None, "--device", help="hf/vllm: cpu | cuda (default: cuda when available)"),
    gguf: Path | None = typer.Option(None, "--gguf", help="llamacpp: the GGUF to load (default: the model's own)"),
    parallel: int = llamacpp_parallel_option(),
    threads: int | None = llamacpp_threads_option(),
    base_url: str | None = typer.Option(
        None, "--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1 (key from OPENAI_API_KEY)"
    ),
    concurrency: int = typer.Option(
        field_default(OpenAIConfig, "concurrency"),
        "--concurrency",
        help="openai: requests in flight",
        callback=number(ge=1, le=INT32_MAX),
    ),
    extra_body: str | None = typer.Option(None, "--extra-body", help="openai: JSON object merged into each request"),
    strategy: str | None = field_option(PredictConfig, "strategy", "--strategy"),
) -> None:
    """Generate a counselor reply for every test sample (resumable)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mi_llm.build.strategy import Strategy
    from mi_llm.evaluate.predict import PredictBackend, backend_options, count_test_samples, predict, resolve_backend
    from mi_llm.llm.backends import preset as make_preset

    config = make_preset(
        preset,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    test_file, total = count_test_samples(data, limit)  # a broken line fails before the model loads
    steer = Strategy.parse(strategy) if strategy is not None else None  # a bad policy file too
    name = resolve_backend(backend)
    options = backend_options(
        name,
        seed=config.seed,
        device=device,
        gguf=gguf,
        parallel=parallel,
        threads=threads,
        base_url=base_url,
        concurrency=concurrency,
        extra_body=extra_body,
    )
    chosen = PredictBackend.choose(name, model, adapter, options, batch_size)
    with console.status(f"loading {model} ({name})"):
        be = chosen.load()
    with (
        be,
        Progress(
            TextColumn("predict"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tps]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task("predict", total=total, tps="")
        stats = {"tokens": 0}
        t0 = time.monotonic()

        def on_batch(n: int, tokens: int) -> None:
            stats["tokens"] += tokens
            dt = time.monotonic() - t0
            bar.update(task, advance=n, tps=f"{stats['tokens'] / dt:.1f} tok/s" if dt > 0 else "")

        res = predict(
            be,
            test_file,
            output,
            config,
            batch_size=chosen.batch_size,
            limit=limit,
            overwrite=overwrite,
            progress=on_batch,
            strategy=steer,
        )
        bar.update(task, completed=total)
    console.print(
        f"wrote {res.output} ({res.samples} samples, {res.generated_now} generated now, "
        f"{res.completion_tokens} tokens in {res.seconds:.1f} s, {res.tokens_per_s:.1f} tok/s)"
    )
