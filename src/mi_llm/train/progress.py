"""A small counting progress bar for preparation stages (on the shared stderr console)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def counting_progress(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mi_llm.console import console

    with Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    ) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)
