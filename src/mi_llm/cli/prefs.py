"""`mi-llm prefs build` (preference pairs scored by a MITI coder) and `mi-llm prefs export`."""

from __future__ import annotations

from pathlib import Path

import typer

from mi_llm.cli.options import (
    INT32_MAX,
    field_option,
    llamacpp_parallel_option,
    llamacpp_threads_option,
)
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console, setup_logging
from mi_llm.prefs.config import PrefsConfig

prefs_app = typer.Typer(help="Preference pairs for DPO / KTO, scored by a MITI coder.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(prefs_app, name="prefs")


def _exports(pairs_file: Path, llamafactory: Path | None, trl: Path | None) -> None:
    from mi_llm.prefs.pairs import read_pairs, write_llamafactory_pairs, write_trl_pairs

    if llamafactory is None and trl is None:
        return
    pairs = read_pairs(pairs_file)
    if llamafactory is not None:
        write_llamafactory_pairs(llamafactory, pairs)
        console.print(f"LLaMA-Factory pairwise dataset (ranking: true): {llamafactory}")
    if trl is not None:
        write_trl_pairs(trl, pairs)
        console.print(f"TRL prompt/chosen/rejected: {trl}")


@prefs_app.command("build")
def build_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="samples.train.jsonl, or a build folder"),
    output: Path = typer.Option(..., "--output", "-o", help="pairs JSONL to write"),
    model: str = field_option(PrefsConfig, "model", "--model", "-m"),
    adapter: str | None = field_option(PrefsConfig, "adapter", "--adapter", "-a"),
    backend: str = field_option(PrefsConfig, "backend", "--backend"),
    k: int = field_option(PrefsConfig, "k", "-k", "--k"),
    temperature: float = field_option(PrefsConfig, "temperature"),
    top_p: float = field_option(PrefsConfig, "top_p"),
    max_new_tokens: int = field_option(PrefsConfig, "max_new_tokens", le=INT32_MAX),
    seed: int = field_option(PrefsConfig, "seed", callback=seed_check),
    batch_size: int = field_option(PrefsConfig, "batch_size", le=INT32_MAX),
    limit: int | None = field_option(PrefsConfig, "limit", le=INT32_MAX),
    coder: str = field_option(PrefsConfig, "coder"),
    min_margin: float = field_option(PrefsConfig, "min_margin"),
    degenerate_rejected: bool = field_option(
        PrefsConfig, "degenerate_rejected", "--degenerate-rejected/--no-degenerate-rejected"
    ),
    parallel: int = llamacpp_parallel_option(),
    threads: int | None = llamacpp_threads_option(),
    export_llamafactory: Path | None = typer.Option(
        None, "--export-llamafactory", help="also write the LLaMA-Factory pairwise dataset into this folder"
    ),
    export_trl: Path | None = typer.Option(None, "--export-trl", help="also write TRL prompt/chosen/rejected JSONL"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Sample K replies per round, score them with a MITI coder, keep chosen/rejected pairs (resumable)."""
    from pydantic import ValidationError

    from mi_llm.errors import MiLlmError
    from mi_llm.evaluate.predict import backend_options, resolve_backend
    from mi_llm.io import describe_validation_error
    from mi_llm.prefs.build import build_prefs

    setup_logging(verbose)
    try:
        cfg = PrefsConfig(
            model=model,
            adapter=adapter,
            backend=backend,
            k=k,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
            limit=limit,
            coder=coder,
            min_margin=min_margin,
            degenerate_rejected=degenerate_rejected,
        )
    except ValidationError as e:
        raise MiLlmError(f"bad option: {describe_validation_error(e)}") from None
    if not data.exists():  # before the backend is chosen (its crash probe takes seconds)
        raise MiLlmError(f"{data}: no such file or folder")
    name = resolve_backend(cfg.backend)
    opts = backend_options(name, seed=cfg.seed, parallel=parallel, threads=threads)
    r = build_prefs(cfg.model_copy(update={"backend": name}), data, output, backend_options=opts)
    s = r.summary
    console.print(
        f"{r.pairs} pairs from {r.rounds} rounds ({r.sampled_now} sampled now; "
        f"degenerate replies: {sum(s['degenerate'].values())}); "
        f"mean score chosen {s['mean_score_chosen']}, rejected {s['mean_score_rejected']}: {r.output}"
    )
    _exports(r.output, export_llamafactory, export_trl)


@prefs_app.command("export")
def export_cmd(
    pairs: Path = typer.Argument(..., help="a pairs JSONL from `mi-llm prefs build`"),
    llamafactory: Path | None = typer.Option(None, "--llamafactory", help="folder for the LLaMA-Factory dataset"),
    trl: Path | None = typer.Option(None, "--trl", help="TRL prompt/chosen/rejected JSONL"),
) -> None:
    """Write a pairs file as LLaMA-Factory's pairwise dataset and/or TRL's preference records."""
    from mi_llm.errors import MiLlmError

    if llamafactory is None and trl is None:
        raise MiLlmError("mi-llm prefs export: give --llamafactory DIR and/or --trl FILE")
    _exports(pairs, llamafactory, trl)
