"""`mi-llm miti ...`: MITI 4.2.1 scores, coder agreement, and the human coding tool.

The automatic coders' commands (`code`, `code-utterances`, `train-coder`) live in
`mi_llm.cli.miti_coder`; register() adds them to `miti_app` (that module does not import
this one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.table import Table

from mi_llm.cli.options import number
from mi_llm.console import console
from mi_llm.errors import MiLlmError

log = logging.getLogger(__name__)

miti_app = typer.Typer(
    help="MITI 4.2.1: score coded sessions, measure coder agreement, code sessions by hand.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(miti_app, name="miti")
    try:
        from mi_llm.cli.miti_coder import coder_app
    except ModuleNotFoundError as e:
        if e.name != "mi_llm.cli.miti_coder":
            raise
    else:
        # The automatic coders' commands, after this module's own; once, however often this runs.
        miti_app.registered_commands += [
            c for c in coder_app.registered_commands if c not in miti_app.registered_commands
        ]


def _labelled(spec: str) -> tuple[str | None, Path]:
    """'NAME=path' or 'path'."""
    name, sep, path = spec.partition("=")
    if sep and name and not Path(spec).exists():
        return name, Path(path)
    return None, Path(spec)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@miti_app.command("score")
def score_cmd(
    inputs: list[str] = typer.Argument(
        ..., help="coded Dialogue JSONL file(s); 'NAME=FILE' names a system (default: file name)"
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="JSON file to write (per-session scores, aggregates, table)"
    ),
    definition: str = typer.Option(
        "default",
        "--ratio",
        help="MI-adherent ratio: 'default' = MIA/(MIA+MINA), 'pwp-adherent' (PwP counts as adherent), "
        "or 'adherent=AF,Seek,EA;non-adherent=Persuade,Confront'",
    ),
    group_by: str = typer.Option("none", help="split each file into systems by: none | style | language | source"),
    allow_uncoded: bool = typer.Option(
        False, "--allow-uncoded", help="score counselor turns without codes as uncoded volleys instead of failing"
    ),
    paper: bool = typer.Option(True, "--paper/--no-paper", help="show the MI-LLM paper's figures beside the scores"),
) -> None:
    """Score coded sessions: behaviour counts, globals, %CR, R:Q, MIA, MINA, MI-adherent ratio."""
    from mi_llm.miti.results import code_and_score, write_miti_scores
    from mi_llm.miti.scoring import RatioDefinition
    from mi_llm.miti.session import CodedSession, load_sessions

    if group_by not in ("none", "style", "language", "source"):
        raise MiLlmError(f"--group-by must be none, style, language or source (got {group_by!r})")
    ratio = RatioDefinition.parse(definition)
    systems: dict[str, list[CodedSession]] = {}
    files: dict[str, list[str]] = {}
    for spec in inputs:
        name, path = _labelled(spec)
        name = name or path.stem
        for s in load_sessions(path, allow_uncoded=allow_uncoded):
            label = name if group_by == "none" else f"{name}/{getattr(s, group_by)}"
            systems.setdefault(label, []).append(s)
            files.setdefault(label, [])
            if str(path) not in files[label]:
                files[label].append(str(path))
    scores = code_and_score(systems, ratio=ratio, files=files, paper=paper)
    write_miti_scores(output, scores)
    console.print(scores.comparison_table(paper=paper).to_rich())
    for n in scores.notes:
        console.print(f"[dim]note: {n}[/]")
    console.print(f"wrote {output}")


@miti_app.command("agree")
def agree_cmd(
    files: list[str] = typer.Argument(
        ..., help="two or more coders' coded Dialogue JSONL files; 'NAME=FILE' names a coder"
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="JSON file to write"),
    align: str = typer.Option(
        "strict", help="utterance matching: strict (same segmentation required) | text (pair identical texts)"
    ),
    definition: str = typer.Option("default", "--ratio", help="MI-adherent ratio definition (see `miti score --help`)"),
) -> None:
    """Inter-coder reliability: ICC per score, Cohen's kappa and Krippendorff's alpha per code."""
    from mi_llm.io import write_json
    from mi_llm.miti.reliability import agreement, read_coder_file
    from mi_llm.miti.scoring import RatioDefinition

    if len(files) < 2:
        raise MiLlmError("give at least two coders' files")
    ratio = RatioDefinition.parse(definition)
    coders = []
    for spec in files:
        name, path = _labelled(spec)
        coders.append(read_coder_file(path, name))
    # Two files with the same stem (a/coded.jsonl, b/coded.jsonl): tell them apart.
    stems = [c.name for c in coders]
    for c in coders:
        if stems.count(c.name) > 1:
            c.name = str(c.path)
    result = agreement(coders, mode=align, definition=ratio)
    _print_agreement(result)
    if output:
        write_json(output, result)
        console.print(f"wrote {output}")


_ABBR = {"Persuade": "Pers", "Confront": "Conf"}


def _print_agreement(r: dict) -> None:
    u = r["utterances"]
    ov = u["overall"]
    s = r["sessions"]
    console.print(
        f"sessions matched: {s['matched']}"
        + "".join(f"; only in {k}: {len(v)}" for k, v in s["only_in"].items() if v)
        + f" · utterances compared: {ov['units']} ({r['alignment']['mode']} alignment"
        + "".join(f"; {k} unmatched {n}" for k, n in r["alignment"]["unmatched"].items() if n)
        + ")"
    )
    t = Table(title="Utterance level (codes; null = 'none')")
    for col in ("code", *(f"n {c['name']}" for c in r["coders"]), "% agree", "Cohen's kappa", "Kripp. alpha"):
        t.add_column(col)
    t.add_row(
        "[b]all codes[/]",
        *["" for _ in r["coders"]],
        _fmt(ov["percent_agreement"]),
        _fmt(ov["cohen_kappa"]),
        _fmt(ov["krippendorff_alpha"]),
    )
    for code, row in u["per_code"].items():
        t.add_row(
            code,
            *[str(row["count"][c["name"]]) for c in r["coders"]],
            _fmt(row["percent_agreement"]),
            _fmt(row["cohen_kappa"]),
            _fmt(row["krippendorff_alpha"]),
        )
    console.print(t)
    for cm in u["confusion"].values():
        ct = Table(title=f"Confusion: rows {cm['rows']}, columns {cm['columns']}")
        ct.add_column("")
        for lab in cm["labels"]:
            ct.add_column(_ABBR.get(lab, lab), justify="right")
        for lab, row in zip(cm["labels"], cm["matrix"]):
            ct.add_row(
                lab,
                *[
                    f"[b]{v}[/]" if i == cm["labels"].index(lab) and v else (str(v) if v else "·")
                    for i, v in enumerate(row)
                ],
            )
        console.print(ct)
    it = Table(title="Session level ICC", caption="; ".join(r["session_scores"]["forms"].values()))
    for col in ("score", "sessions", "ICC(2,1)", "95% CI", "ICC(3,1)", "note"):
        it.add_column(col)
    for key, row in r["session_scores"]["scores"].items():
        ci = row["icc2_1_ci95"]
        it.add_row(
            key,
            str(row["n"]),
            _fmt(row["icc2_1"]),
            "" if not ci else f"{ci[0]:.2f} to {ci[1]:.2f}",
            _fmt(row["icc3_1"]),
            row["note"] or "",
        )
    console.print(it)
    b = r["benchmarks"]
    console.print(f"[dim]human benchmarks: session ICC {b['session_icc']}; utterance kappa {b['utterance_kappa']}[/]")


@miti_app.command("blind")
def blind_cmd(
    inputs: list[str] = typer.Argument(
        ...,
        help="each system's sessions (Dialogue JSONL, e.g. a run's miti/<system>.coded.jsonl); "
        "'NAME=FILE' names a system (default: the file name without .coded.jsonl)",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="folder for sessions.jsonl (to code) and key.json (kept apart)"
    ),
    dialogues: int | None = typer.Option(
        None,
        "--dialogues",
        help="dialogues per system (default all); the same dialogues for every system where they share ids",
        callback=number(ge=1),
    ),
    seed: int = typer.Option(0, help="seed of the draw, the order and the blind ids"),
) -> None:
    """Mix several systems' sessions for blind human coding: random ids, no system names, no automatic codes."""
    from mi_llm.corpus.schema import read_dialogues
    from mi_llm.miti.blind import blind_sample, write_blind

    systems: dict[str, list] = {}
    for spec in inputs:
        name, path = _labelled(spec)
        name = name or path.name.removesuffix(".jsonl").removesuffix(".coded")
        if name in systems:
            raise MiLlmError(f"{spec}: the system name {name!r} is given twice (name them: NAME=FILE)")
        systems[name] = read_dialogues(path)
    sessions, key = blind_sample(systems, dialogues, seed)
    sessions_path, key_path = write_blind(output, sessions, key)
    how = "the same dialogues for every system" if key["paired"] else "drawn per system"
    console.print(f"wrote {len(sessions)} blinded session(s) of {len(systems)} system(s) ({how}) to {sessions_path}")
    console.print(
        f"code them with `mi-llm miti annotate {sessions_path} --coder-name NAME`; keep {key_path} from the coder, "
        "then `mi-llm miti unblind`"
    )


@miti_app.command("unblind")
def unblind_cmd(
    coded: Path = typer.Argument(..., help="the coder's export of the blinded sessions (miti annotate --out)"),
    key: Path = typer.Option(..., "--key", help="key.json written by `miti blind`"),
    output: Path = typer.Option(
        ..., "-o", "--output", help="folder for one coded file per system, original ids restored"
    ),
) -> None:
    """Split blind-coded sessions back into systems, for `miti score` and `miti agree`."""
    from mi_llm.miti.blind import unblind, write_unblinded

    paths = write_unblinded(output, unblind(coded, key))
    for p in paths:
        console.print(f"wrote {p}")
    console.print(f"score them side by side: mi-llm miti score {' '.join(str(p) for p in paths)} -o scores.json")


@miti_app.command("annotate")
def annotate_cmd(
    sessions: Path = typer.Argument(..., help="Dialogue JSONL to code (coded or not)"),
    coder_name: str = typer.Option(..., "--coder-name", help="your name or initials (one autosave file per coder)"),
    port: int = typer.Option(8765, help="port of the local page", callback=number(ge=1, le=65535)),
    host: str = typer.Option(
        "127.0.0.1",
        help="loopback address to listen on (127.0.0.1, ::1, localhost): the page has no login and the sessions are health data",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="also answer to this Host name (NAME or NAME:PORT; repeatable), e.g. an /etc/hosts alias",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="coded JSONL to export to (default SESSIONS.<coder>.coded.jsonl; the autosave file lies beside it)",
    ),
    keep_codes: bool = typer.Option(
        False,
        "--keep-codes",
        help="start from the codes and globals already in SESSIONS (default: only their segmentation)",
    ),
    export_only: bool = typer.Option(
        False, "--export", help="write the export from the autosave file and exit, without serving"
    ),
) -> None:
    """Serve a local page to code sessions by hand (MITI 4.2.1); autosaves every change."""
    from mi_llm.miti.annotate.app import AnnotationProject, check_host, serve
    from mi_llm.serve.hostguard import HostPolicy

    if not export_only:  # refuse bad serving options before touching any file
        check_host(host)
        HostPolicy(host, allowed_host)
    project = AnnotationProject(sessions, coder_name, out, keep_codes=keep_codes)
    if export_only:
        r = project.export()
        console.print(
            f"exported {r['sessions']} session(s) ({r['done']} done, {r['without_globals']} without all "
            f"4 globals; {r['not_saved']} never saved) to {r['path']}"
        )
        return
    console.print(f"coding {len(project.dialogues)} session(s) as [b]{project.coder}[/]; autosave {project.autosave}")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"open [b]http://{shown}:{port}/[/] in a browser; export writes {project.out}; Ctrl+C stops")
    serve(project, host=host, port=port, allowed_hosts=allowed_host)
