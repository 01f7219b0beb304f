"""Checks of numeric command-line options, run while the command line is parsed.

click's own ranges let nan through (every comparison with nan is false) and inf through
any open-ended range, and its errors depend on the click version; these checks give one
line that names the option, exit code 2 (MiLlmError), before any file is read.

    workers: Optional[int] = typer.Option(None, "--workers", callback=number(ge=1))
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

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
