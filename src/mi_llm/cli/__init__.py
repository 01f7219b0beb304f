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
_STAGES = ("data", "evaluate", "models", "train", "transcribe", "miti", "pipeline", "serve", "simulate", "prefs")


_registered = False


def _register_all() -> None:
    """Add every stage's commands to `app`, once per process (main() may be called many times
    in one process, by tests or by a program that embeds the CLI)."""
    global _registered
    if _registered:
        return
    import importlib

    for name in _STAGES:
        importlib.import_module(f"mi_llm.cli.{name}").register(app)
    _registered = True


def _click_exception_types() -> tuple[type[Exception], ...]:
    """Usage-error classes: click's, and the copy of click that typer >= 0.29 bundles."""
    types: list[type[Exception]] = [click.exceptions.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        types.append(TyperClickException)
    except ImportError:  # typer < 0.29 raises click's own exceptions
        pass
    return tuple(types)


def _abort_types() -> tuple[type[BaseException], ...]:
    return (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)


def usage_error_line(e: Exception) -> str:
    """One line: the sub-command and what is wrong (click's message names the option)."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None and getattr(ctx, "command_path", None) else "mi-llm"
    message = " ".join(str(e.format_message()).split()) if hasattr(e, "format_message") else str(e)
    return f"{where}: {message}"


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
    except _abort_types():
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except _click_exception_types() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `mi-llm data` alone: the help is the answer
            e.show()  # type: ignore[attr-defined]  # click's NoArgsIsHelpError, a ClickException
            sys.exit(2)
        print(usage_error_line(e), file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
