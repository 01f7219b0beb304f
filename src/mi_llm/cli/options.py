"""Checks of numeric command-line options, run while the command line is parsed.

click's own ranges let nan through (every comparison with nan is false) and inf through
any open-ended range, and its errors depend on the click version; these checks give one
line that names the option, exit code 2 (MiLlmError), before any file is read.

    workers: Optional[int] = typer.Option(None, "--workers", callback=number(ge=1))

An option that sets a field of a stage's settings model takes its default, help and range
from that field (`field_option`), so no default is written twice:

    lr: float = field_option(TrainConfig, "lr")
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import annotated_types
import typer
from pydantic import BaseModel

from mi_llm.errors import MiLlmError

# Values that reach C libraries (llama.cpp threads and token counts) must fit an int32.
INT32_MAX = 2**31 - 1
# numpy and accelerate seed with 32-bit unsigned integers; llama.cpp's seed is a uint32.
SEED_MAX = 2**32 - 1
# The longest wait the OS timers take (about 292 years): a longer socket timeout is an
# OverflowError ("timestamp out of range") on the first request.
TIMEOUT_MAX = float(threading.TIMEOUT_MAX)


def option_name(param: Any) -> str:
    """The option's long name (`--history-budget`), as the user would type it."""
    opts = list(getattr(param, "opts", None) or [])
    longs = [o for o in opts if o.startswith("--")]
    if longs:
        return longs[0]
    if opts:
        return opts[0]
    return f"--{str(getattr(param, 'name', 'value')).replace('_', '-')}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def describe_range(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> str:
    parts = []
    if ge is not None:
        parts.append(f"at least {_fmt(ge)}")
    if gt is not None:
        parts.append(f"above {_fmt(gt)}")
    if le is not None:
        parts.append(f"at most {_fmt(le)}")
    if lt is not None:
        parts.append(f"below {_fmt(lt)}")
    return " and ".join(parts)


def check_number(
    name: str,
    value: float | int | None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    """Raise a one-line MiLlmError naming `name` unless `value` is finite and in range."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MiLlmError(f"{name} must be a finite number (got {value})")
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if not ok:
        raise MiLlmError(f"{name} must be {describe_range(ge, gt, le, lt)} (got {_fmt(value)})")


def number(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> Callable[[Any, Any, Any], Any]:
    """A typer/click callback that checks a numeric option (None, an unset Optional, passes)."""

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        check_number(option_name(param), value, ge=ge, gt=gt, le=le, lt=lt)
        return value

    return callback


def seed(ctx: Any, param: Any, value: Any) -> Any:
    """Callback for a seed handed to numpy/torch/llama.cpp: 0 .. 2**32 - 1."""
    check_number(option_name(param), value, ge=0, le=SEED_MAX)
    return value


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of a settings model's field (its factory called)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def field_bounds(model: type[BaseModel], name: str) -> dict[str, float]:
    """The field's numeric range (ge/gt/le/lt) as `number` takes it."""
    bounds: dict[str, float] = {}
    for m in model.model_fields[name].metadata:
        for key, kind in (
            ("ge", annotated_types.Ge),
            ("gt", annotated_types.Gt),
            ("le", annotated_types.Le),
            ("lt", annotated_types.Lt),
        ):
            if isinstance(m, kind):
                bounds[key] = getattr(m, key)
    return bounds


def field_option(
    model: type[BaseModel],
    name: str,
    *param_decls: str,
    le: float | None = None,
    callback: Callable[[Any, Any, Any], Any] | None = None,
    help: str | None = None,
    **kwargs: Any,
) -> Any:
    """A typer option for a field of `model`: its default, its description as the help (unless
    `help` is given) and, for a numeric field, its range checked while the command line is
    parsed (`le` caps it further, e.g. INT32_MAX for values that reach C code)."""
    bounds = field_bounds(model, name)
    if le is not None:
        bounds["le"] = min(le, bounds.get("le", le))
    if callback is None and bounds:
        callback = number(**bounds)
    field = model.model_fields[name]
    return typer.Option(
        ... if field.is_required() else field_default(model, name),
        *param_decls,
        callback=callback,
        help=help if help is not None else field.description,
        **kwargs,
    )


def llamacpp_parallel_option() -> Any:
    """`--parallel` of the commands that generate with llama.cpp in batches (predict, prefs build)."""
    from mi_llm.llm.backends.config import LlamaCppConfig

    return typer.Option(
        field_default(LlamaCppConfig, "parallel"),
        "--parallel",
        help="llamacpp: sequences decoded together (1 = single stream)",
        callback=number(ge=1, le=INT32_MAX),
    )


def llamacpp_threads_option() -> Any:
    """`--threads` of the commands that generate with llama.cpp (predict, prefs build)."""
    return typer.Option(None, "--threads", help="llamacpp: CPU threads", callback=number(ge=1, le=INT32_MAX))
