"""The `mi-llm` command. Thin: each sub-command parses arguments and calls one function.

Each pipeline stage registers its commands from its own module under `mi_llm.cli`.
"""

from __future__ import annotations

import sys
import warnings

import click
import typer

from mi_llm.errors import MiLlmError

app = typer.Typer(
    name="mi-llm",
    help="Build, measure and serve Motivational Interviewing counselor LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per stage; each defines `register(app)`.
_STAGES = ("data", "evaluate", "models", "train", "transcribe", "miti", "pipeline", "serve")


def _register_all() -> None:
    import importlib

    for name in _STAGES:
        importlib.import_module(f"mi_llm.cli.{name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, no traceback."""
    # peft reads a transformers attribute deprecated in 5.x: noise users cannot act on
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    _register_all()
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="mi-llm", standalone_mode=False)
    except MiLlmError as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
