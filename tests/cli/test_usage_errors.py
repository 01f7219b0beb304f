"""Usage errors (bad or missing options and arguments) are one line on stderr and exit code 2,
whichever click typer uses (typer >= 0.29 bundles its own copy of click)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mi_llm.cli import main

CASES = [
    (["evaluate", "--workers", "0", "x.jsonl"], "--workers"),
    (["data", "build"], "dialogues"),
    (["serve", "--port", "notaport"], "--port"),
    (["train", "--model"], "--model"),
    (["predict", "--backend"], "--backend"),
    (["no-such-command"], "no-such-command"),
    (["data", "build", "x.jsonl", "--no-such-option"], "--no-such-option"),
]


@pytest.mark.parametrize(("argv", "names"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_error_is_one_line_and_exit_2(argv, names, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1, err
    assert names in err and "Traceback" not in err


def test_the_installed_command_exits_2_in_one_line() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "mi_llm.cli", "evaluate", "--workers", "0", "x.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--workers" in p.stderr


def test_help_is_not_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "Usage" in capsys.readouterr().out


def test_main_registers_the_commands_once_per_process(capsys) -> None:
    """In-process callers (tests, embedding programs) call main() many times: the command tree
    must not grow with each call."""
    import mi_llm.cli as cli

    for _ in range(3):
        with pytest.raises(SystemExit):
            main(["--help"])
    capsys.readouterr()
    names = [c.name for c in cli.app.registered_commands] + [g.name for g in cli.app.registered_groups]
    assert len(names) == len(set(names)), sorted(names)
