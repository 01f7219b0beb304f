"""`mi-llm data ...`: import corpora, download them, build round-based samples."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mi_llm.build.config import BuildConfig
from mi_llm.cli.options import field_option
from mi_llm.console import console

data_app = typer.Typer(help="Corpora: import, download, build samples.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("import")
def import_cmd(
    source: str = typer.Argument(
        ...,
        help="cpsycound | cpsycoune | smile | psydt | annomi | mibot | sharegpt | llamafactory | openai | dialogues | demo (the bundled corpus; PATH is not read, --language picks a part)",
    ),
    path: Path = typer.Argument(..., help="folder or file to import"),
    output: Path = typer.Option(..., "-o", "--output", help="dialogues JSONL to write"),
    language: str | None = typer.Option(None, help="zh | en, for sources that do not say (sharegpt, openai)"),
    no_merge: bool = typer.Option(False, "--no-merge", help="keep consecutive turns by the same role apart"),
    keep_empty: bool = typer.Option(False, "--keep-empty", help="keep turns with blank text"),
) -> None:
    """Import a corpus into the canonical dialogues JSONL."""
    from mi_llm.corpus.importers import import_source
    from mi_llm.corpus.normalize import NormalizeOptions
    from mi_llm.corpus.schema import write_dialogues
    from mi_llm.errors import MiLlmError
    from mi_llm.io import check_writable

    # Options and the output path first: a big corpus takes a while to read.
    if language and language not in ("zh", "en"):
        raise MiLlmError(f"--language must be zh or en (got {language!r})")
    check_writable(output, "-o")
    opts = NormalizeOptions(merge_same_role=not no_merge, drop_empty=not keep_empty)
    dialogues, stats = import_source(source, path, opts, language=language)
    write_dialogues(output, dialogues)
    table = Table(title=f"imported {source}", show_header=False)
    for key in ("dialogues", "turns", "rounds", "merged", "dropped", "skipped_dialogues", "trailing_client"):
        table.add_row(key.replace("_", " "), f"{getattr(stats, key):,}")
    console.print(table)
    console.print(f"wrote {output}")


@data_app.command("download")
def download_cmd(
    source: str = typer.Argument(..., help="cpsycound | annomi | smile | mibot"),
    dest: Path = typer.Argument(..., help="folder to download into"),
    base_url: str | None = typer.Option(None, help="mirror to download from instead of the public source"),
) -> None:
    """Download a public corpus (resumable, size and checksum verified)."""
    from mi_llm.console import setup_logging
    from mi_llm.corpus.download import download

    setup_logging()
    rep = download(source, dest, base_url=base_url)
    console.print(
        f"{rep.source}: {rep.downloaded:,} downloaded ({rep.bytes:,} bytes), {rep.present:,} already there, "
        f"{rep.extracted:,} extracted into {rep.dest}"
    )


@data_app.command("build")
def build_cmd(
    dialogues: list[Path] = typer.Argument(..., help="dialogues JSONL file(s)"),
    output: Path = typer.Option(..., "-o", "--output", help="build folder"),
    train: float = field_option(BuildConfig, "train"),
    test: float = field_option(BuildConfig, "test"),
    seed: int = field_option(BuildConfig, "seed"),
    history_budget: int | None = field_option(BuildConfig, "history_budget"),
    tokenizer: str = field_option(BuildConfig, "tokenizer"),
    export_mode: str = field_option(BuildConfig, "export_mode"),
    codes: str = field_option(BuildConfig, "codes"),
    coder: str = field_option(BuildConfig, "coder"),
    strategy: bool = field_option(BuildConfig, "strategy"),
    augment_cr: int = field_option(BuildConfig, "augment_cr"),
) -> None:
    """Split dialogues and write round-based samples plus LLaMA-Factory and OpenAI exports."""
    from mi_llm.build.stage import build

    summary = build(
        dialogues,
        output,
        train=train,
        test=test,
        seed=seed,
        history_budget=history_budget,
        tokenizer=tokenizer,
        export_mode=export_mode,
        codes=codes,
        coder=coder,
        strategy=strategy,
        augment_cr=augment_cr,
    )
    table = Table(title=f"build {output}")
    for col in ("split", "dialogues", "samples"):
        table.add_column(col)
    for split in ("train", "test"):
        table.add_row(split, f"{summary[split]['dialogues']:,}", f"{summary[split]['samples']:,}")
    console.print(table)
    console.print(f"unused dialogues: {summary['unused_dialogues']:,}; wrote {', '.join(summary['files'])}")
