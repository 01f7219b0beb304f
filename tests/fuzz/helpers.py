"""Shared by the fuzz tests: in-process CLI runs, the error contract, garbage generators.

The contract every entry point keeps on bad input: exit code 2, exactly one line on stderr
that says where (FILE:LINE, or the option's name) and what, no traceback, and no output
file left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mi_llm.cli import main

# Bounded so that the whole folder runs in about two minutes on two shared cores.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Result:
    """`mi-llm ARGV` in this process. An exception that escapes `main` (a traceback for a
    user) is not caught here: it fails the test with its own traceback."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    if code is None:
        code = 0
    return Result(int(code) if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def record_exit(r: Result) -> None:
    """Count exit codes in hypothesis' statistics (--hypothesis-show-statistics), to see how
    many examples were accepted; a no-op outside a hypothesis test."""
    from hypothesis import event
    from hypothesis.errors import InvalidArgument

    try:
        event(f"exit {r.code}")
    except InvalidArgument:
        pass


def error_line(r: Result) -> str:
    """The one stderr line of a failed run (asserts the contract's form)."""
    assert r.code == 2, f"exit code {r.code}, expected 2; stderr: {r.err!r}"
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {r.err!r}"
    return lines[0]


def located_at(r: Result, path: Path | str, line: int | None = None) -> str:
    """Assert the error line is `PATH:LINE: what` (or `PATH: what` / `PATH:N: what` when
    `line` is None) and return the `what`."""
    msg = error_line(r)
    p = re.escape(str(path))
    pattern = rf"{p}:{line}: (.+)" if line is not None else rf"{p}(?::\d+)?: (.+)"
    m = re.fullmatch(pattern, msg)
    assert m, f"error does not name {path}{':' + str(line) if line is not None else ''}: {msg!r}"
    assert m.group(1).strip(), msg
    return m.group(1)


def names_option(r: Result, option: str) -> str:
    msg = error_line(r)
    assert option in msg, f"error does not name {option}: {msg!r}"
    return msg


# ---------------------------------------------------------------- garbage

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "",
            " ",
            "client",
            "counselor",
            "user",
            "assistant",
            "system",
            "human",
            "gpt",
            "zh",
            "en",
            "\x00",
            "1",
            "\ud800",
            "x\udfff",
        ]
    )  # lone surrogates: valid JSON escapes, not characters
)

# Any JSON value, nested a little: what a broken or hostile file may hold where a field goes.
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

# A line that is not one JSON object.
bad_lines = st.one_of(
    st.text(
        alphabet=string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
        min_size=1,
        max_size=30,
    ).filter(lambda s: s.strip() and not _is_json_object(s)),
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            '{"a": 1',
            '{"a": }',
            "nan",
            "null",
            "[]",
            "[{}]",
            '"text"',
            "1",
            "true",
            "{'a': 1}",
            '{"a": 1} x',
        ]
    ),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v)),
)


def _is_json_object(s: str) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except ValueError:
        return False


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place inside a JSON value, as a key/index path (the root is ())."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


_of_kind = {
    "null": st.none(),
    "bool": st.booleans(),
    "number": st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True),
    "str": st.text(max_size=8),
    "list": st.lists(json_values, max_size=3),
    "dict": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
}


# Stands for a value nested DEEP levels deep: dumps() writes it as text, since json.dumps
# itself cannot write what it is there to test.
DEEP = "\x00deep-nesting\x00"
DEEP_LEVELS = (150, 5000)

# Values of the same JSON type that are still wrong, or hard to carry through: the other
# half of the corruptions (a string where a string goes, but not one a file can hold).
_nasty = {
    "str": st.sampled_from(["", "a\nb", "\ud800", "x\udfff", "x" * 5000, DEEP]),
    "number": st.sampled_from([float("nan"), float("inf"), -1, 0, 2**64, 0.5, DEEP]),
    "bool": st.sampled_from([True, False, DEEP]),
    "null": st.sampled_from([DEEP, ""]),
    "list": st.sampled_from([[], [None], [[]], DEEP]),
    "dict": st.sampled_from([{}, {"": None}, {"\n": 1}, DEEP]),
}


def nasty(value: Any) -> st.SearchStrategy[Any]:
    return _nasty[_kind(value)]


def other_kind(value: Any) -> st.SearchStrategy[Any]:
    """A value of any JSON type but the one `value` has: the commonest corruption."""
    return st.one_of([s for k, s in _of_kind.items() if k != _kind(value)])


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """`value` (a JSON value) with one place changed, chosen evenly among all its places:
    replaced by a value of another type or by any garbage, deleted (a key or an item), an
    unknown key added, an item duplicated."""
    value = json.loads(json.dumps(value))  # a deep copy to change in place
    action = draw(
        st.sampled_from(["other type", "other type", "nasty", "nasty", "garbage", "delete", "add key", "duplicate"])
    )
    paths = _paths(value)
    if action == "nasty":  # a wrong value of the right type: where the values are, the leaves
        paths = [p for p in paths if p and not isinstance(_at(value, p), (dict, list))] or paths
    path = draw(st.sampled_from(paths))
    if not path:
        return draw(other_kind(value) | nasty(value) | json_values)
    parent = _at(value, path[:-1])
    last = path[-1]
    if action == "other type":
        parent[last] = draw(other_kind(parent[last]))
    elif action == "nasty":
        parent[last] = draw(nasty(parent[last]))
    elif action == "garbage":
        parent[last] = draw(json_values)
    elif action == "delete":
        del parent[last]
    elif action == "add key" and isinstance(parent[last], dict):
        parent[last][draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(last, json.loads(json.dumps(parent[last])))
    else:
        parent[last] = draw(other_kind(parent[last]))
    return value


def dumps(obj: Any) -> str:
    """One JSON line; raw UTF-8 unless the value holds a lone surrogate, which only an
    escape can write."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj)
    deep = json.dumps(DEEP)
    if deep in text:  # alternately a little too deep to write back, and too deep to parse
        parts = text.split(deep)
        text = parts[0] + "".join(
            "[" * DEEP_LEVELS[i % 2] + "]" * DEEP_LEVELS[i % 2] + part for i, part in enumerate(parts[1:])
        )
    return text
