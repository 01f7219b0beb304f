"""`mi-llm miti code | code-utterances | train-coder`: the automatic MITI coders.

The commands are defined on `coder_app`; mi_llm.cli.miti.register adds them to `mi-llm miti`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from mi_llm.cli.options import number
from mi_llm.console import console
from mi_llm.errors import InputError, MiLlmError

coder_app = typer.Typer()

_CODER_HELP = (
    "'default' (the coder shipped with mi-llm, the same on every machine), a folder from `mi-llm miti train-coder`, "
    "or llm:<backend>:<model> (e.g. llm:openai:gpt-4o, llm:hf:<model folder>)"
)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _load(coder: str, base_url: str | None, retries: int) -> Any:
    from mi_llm.miti.coders import load_coder

    if coder.startswith("llm:"):
        c = load_coder(coder, base_url=base_url)
        c.retries = retries  # type: ignore[attr-defined]  # an LLM coder (llm: prefix) has retries
        return c
    if base_url:
        raise MiLlmError("--base-url applies to an llm:<backend>:<model> coder only")
    with console.status("loading the coder"):
        c = load_coder(coder)
    if c.validity:  # what its figures are worth, beside them
        console.print(f"coder {c.name}: {c.validity}")
    return c


def _summary(codes: list[str | None], errors: int, seconds: float, what: str) -> None:
    c = Counter(x or "null" for x in codes)
    dist = ", ".join(f"{k} {v}" for k, v in c.most_common())
    console.print(
        f"coded {len(codes)} {what} in {seconds:.1f} s: {dist or 'nothing'}"
        + (f"; [red]{errors} failed[/red] (recorded, code null)" if errors else "")
    )


@coder_app.command("code")
def code_cmd(
    input: Path = typer.Argument(..., help="Dialogue JSONL to code"),
    output: Path = typer.Option(
        ..., "-o", "--output", help="coded Dialogue JSONL (Turn.codes and miti_globals filled)"
    ),
    coder: str = typer.Option("default", "--coder", "-c", help=_CODER_HELP),
    resegment: bool = typer.Option(
        False, "--resegment", help="split counselor turns again even when they already have utterances"
    ),
    base_url: str | None = typer.Option(None, "--base-url", help="LLM coder: the OpenAI-compatible server's URL"),
    retries: int = typer.Option(
        2, "--retries", help="LLM coder: times to re-ask after an invalid answer", callback=number(ge=0, le=100)
    ),
) -> None:
    """Split counselor turns into utterances, code each one, and rate the 4 globals per session."""
    from mi_llm.corpus.schema import read_dialogues, write_dialogues

    dialogues = read_dialogues(input)
    if not dialogues:
        raise InputError(input, "no dialogues in the file")
    if not any(t.role == "counselor" and t.text.strip() for d in dialogues for t in d.turns):
        raise InputError(input, "no counselor turns to code")
    c = _load(coder, base_url, retries)
    t0 = time.monotonic()
    with _progress() as progress:
        task = progress.add_task(f"coding {len(dialogues)} dialogue(s)", total=None)
        coded = c.code_dialogues(
            dialogues, resegment=resegment, progress=lambda d, n: progress.update(task, completed=d, total=n)
        )
    write_dialogues(output, coded)
    codes = [u.code for d in coded for t in d.turns for u in (t.codes or [])]
    errors = sum(d.meta.get("miti_coder_errors", {}).get("utterances", 0) for d in coded)
    no_globals = sum(1 for d in coded if d.miti_globals is None)
    _summary(codes, errors, time.monotonic() - t0, "utterances")
    talk = Counter(t.talk for d in coded for t in d.turns if t.talk)
    console.print("client turns: " + (", ".join(f"{k} {v}" for k, v in talk.most_common()) or "none"))
    if no_globals:
        console.print(f"[yellow]{no_globals} session(s) without global ratings[/yellow] (see meta.miti_coder_errors)")
    console.print(f"wrote {output}")


def _read_items(path: Path, optional_text: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """Lines {id, text, language?, <optional_text keys>?}, checked: FILE:LINE errors (exit 2) for
    a missing or repeated id, an empty text, a language other than zh/en, or an optional field
    (key -> what it holds) that is not a string."""
    from mi_llm.io import iter_jsonl

    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        if "id" not in obj or not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise InputError(path, "each line needs an 'id' (string or integer)", lineno)
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, "'text' must be a non-empty string", lineno)
        lang = obj.get("language")
        if lang is not None and lang not in ("zh", "en"):
            raise InputError(path, f"'language' must be zh or en (got {lang!r})", lineno)
        for field, what in optional_text.items():
            if obj.get(field) is not None and not isinstance(obj[field], str):
                raise InputError(path, f"'{field}' must be a string ({what})", lineno)
        key = str(obj["id"])
        if key in seen:
            raise InputError(path, f"id {obj['id']!r} repeats line {seen[key]}", lineno)
        seen[key] = lineno
        rows.append((lineno, obj))
    return rows


@coder_app.command("code-utterances")
def code_utterances_cmd(
    input: Path = typer.Argument(..., help="JSONL lines {id, text, language?, context?, history?}"),
    output: Path = typer.Option(..., "-o", "--output", help="the same lines plus 'code' (a MITI key or null)"),
    coder: str = typer.Option("default", "--coder", "-c", help=_CODER_HELP),
    base_url: str | None = typer.Option(None, "--base-url", help="LLM coder: the OpenAI-compatible server's URL"),
    retries: int = typer.Option(
        2, "--retries", help="LLM coder: times to re-ask after an invalid answer", callback=number(ge=0, le=100)
    ),
) -> None:
    """Code single utterances (context = the client's previous turn, history = the counselor's
    own turn before it, when given)."""
    from mi_llm.io import write_jsonl
    from mi_llm.miti.coders.base import Item, history_window

    rows = _read_items(
        input, {"context": "the client's previous turn", "history": "the counselor's turn before the context"}
    )
    if not rows:
        raise InputError(input, "no utterances in the file")
    c = _load(coder, base_url, retries)
    items = [
        Item(o["text"], o.get("context") or "", o.get("language"), history_window(o.get("history"), o.get("context")))
        for _, o in rows
    ]
    t0 = time.monotonic()
    with _progress() as progress:
        task = progress.add_task(f"coding {len(items)} utterance(s)", total=len(items))
        results = c.code_items(items, progress=lambda d, n: progress.update(task, completed=d, total=n))
    out = []
    for (_, obj), r in zip(rows, results):
        rec = {**obj, "code": r.code}
        rec.pop("coder_error", None)
        if r.error:
            rec["coder_error"] = r.error
        out.append(rec)
    write_jsonl(output, out)
    _summary([r.code for r in results], sum(1 for r in results if r.error), time.monotonic() - t0, "utterances")
    console.print(f"wrote {output}")


@coder_app.command("train-coder")
def train_coder_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="coder folder to write"),
    data: list[str] = typer.Option(
        [],
        "--data",
        help="KIND=PATH, repeatable: annomi=AnnoMI-full.csv, "
        "welivita=CC_Augmented.csv, mibot=DIR, dialogues=coded.jsonl",
    ),
    recipe: str = typer.Option(
        "embed",
        "--recipe",
        help="embed: n-grams x the embedded model's frozen hidden states "
        "(default; the shipped default coder's recipe); tuned: n-grams x blocks of it tuned to the codes "
        "(better on English, worse on Chinese without Chinese training codes); encoder: n-grams x a small "
        "English encoder fine-tuned end to end (no help on Chinese); embed-encoder: embed x that encoder with "
        "LoRA (the best on English sessions, a little worse on the demo's written dialogues); ngram: n-grams "
        "only. embed, embed-encoder and ngram choose their hyper-parameters on inner folds of the data",
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        help="with --recipe encoder or embed-encoder: the encoder to fine-tune, "
        "a local folder or hub id (default: the bundled all-MiniLM-L6-v2)",
    ),
    weight: list[str] = typer.Option(
        [],
        "--weight",
        help="SOURCE=W, repeatable: how much one source's labels count "
        "(default annomi=1 demo=1 welivita=0.2 mibot=0.2; welivita=1 codes written "
        "counseling better and spoken sessions and Chinese a little worse, see docs/miti-coder.md)",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="n-gram, context and surface features with fixed "
        "hyper-parameters (no inner cross-validation): the fastest",
    ),
    embeddings: bool | None = typer.Option(
        None, "--embeddings/--no-embeddings", help="use the embedded model's hidden states (default: on unless --quick)"
    ),
    exclude: list[Path] = typer.Option(
        [],
        "--exclude",
        help="FILE, repeatable: a dialogues or samples JSONL whose dialogues the coder must not learn from "
        "(e.g. RUN/build/samples.test.jsonl: a grader that never saw an experiment's test dialogues)",
    ),
) -> None:
    """Train the offline coder on the bundled demo codes plus the given labelled data."""
    from mi_llm.miti.coders import train_coder
    from mi_llm.miti.coders.labels import parse_sources, parse_weights

    sources = parse_sources(data)
    weights = parse_weights(weight)
    t0 = time.monotonic()
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def on(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                names = {
                    "loading": "loading labelled data",
                    "embeddings": "embedded-model features",
                    "tuning": "tuning the embedded model's blocks (steps)",
                    "fine-tuning": "fine-tuning the encoder (steps)",
                    "selection": "choosing hyper-parameters on inner folds (fits)",
                    "classifier": "features and classifiers (per expert)",
                    "globals": "global-ratings model",
                }
                tasks[stage] = progress.add_task(names.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        folder = train_coder(
            output,
            sources,
            quick=quick,
            embeddings=embeddings,
            progress=on,
            recipe=recipe,
            encoder=encoder,
            weights=weights,
            exclude=exclude,
        )
    import json

    info = json.loads((folder / "coder.json").read_text())["info"]
    console.print(
        f"trained on {info['n_examples']} utterances ({', '.join(f'{k} {v}' for k, v in info['sources'].items())}) "
        f"in {time.monotonic() - t0:.0f} s"
    )
    if "excluded" in info:
        ex = info["excluded"]
        console.print(f"left out {ex['utterances']} utterances of {ex['dialogues']} excluded dialogues")
    console.print(f"wrote {folder}")


# ---------------------------------------------------------------- client talk

_CLIENT_CODER_HELP = (
    "'default' (the client-talk coder shipped in the package, trained on AnnoMI) or a folder from "
    "`mi-llm miti train-client-coder`"
)


@coder_app.command("code-client")
def code_client_cmd(
    input: Path = typer.Argument(..., help="JSONL lines {id, text, language?, previous?, history?}"),
    output: Path = typer.Option(..., "-o", "--output", help="the same lines plus 'talk' (change, sustain or neutral)"),
    coder: str = typer.Option("default", "--coder", "-c", help=_CLIENT_CODER_HELP),
) -> None:
    """Code client utterances as change talk, sustain talk or neutral (MISC); previous = the counselor's previous turn."""
    from mi_llm.io import write_jsonl
    from mi_llm.miti.coders.client_talk import ClientItem, load_client_coder

    rows = _read_items(
        input, {"previous": "the counselor's previous turn", "history": "the client's own previous turn"}
    )
    if not rows:
        raise InputError(input, "no utterances in the file")
    c = load_client_coder(coder)
    items = [ClientItem(o["text"], o.get("previous") or "", o.get("history") or "", o.get("language")) for _, o in rows]
    t0 = time.monotonic()
    with _progress() as progress:
        task = progress.add_task(f"coding {len(items)} client utterance(s)", total=len(items))
        talk = c.code(items, progress=lambda d, n: progress.update(task, completed=d, total=n))
    write_jsonl(output, [{**obj, "talk": t} for (_, obj), t in zip(rows, talk)])
    dist = ", ".join(f"{k} {v}" for k, v in Counter(talk).most_common())
    console.print(f"coded {len(talk)} client utterances in {time.monotonic() - t0:.1f} s: {dist}")
    console.print(f"wrote {output}")


@coder_app.command("train-client-coder")
def train_client_coder_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="client-talk coder folder to write"),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="AnnoMI-full.csv (or -simple.csv) with client_talk_type "
        "labels (default: ../shared/data/annomi/AnnoMI-full.csv)",
    ),
    select: bool = typer.Option(
        False,
        "--select",
        help="choose the recipe again by cross-validation by transcript "
        "(minutes) instead of reusing the shipped coder's",
    ),
) -> None:
    """Train a client-talk coder (change / sustain / neutral) on AnnoMI's expert labels."""
    from mi_llm.miti.coders.client_talk import shared_annomi
    from mi_llm.miti.coders.client_talk_cv import train_client_coder

    if data is None:
        data = shared_annomi()
        if data is None:
            raise MiLlmError("--data: no AnnoMI CSV given and none found in ../shared/data")
    elif not data.is_file():
        raise MiLlmError(f"--data {data}: no such file")
    t0 = time.monotonic()
    with console.status("training the client-talk coder"):
        folder = train_client_coder(output, data, select=select)
    console.print(f"trained in {time.monotonic() - t0:.0f} s")
    console.print(f"wrote {folder}")
