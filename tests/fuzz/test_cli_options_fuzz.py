"""Every numeric option of every command in mi_llm/cli/*.py.

A bad value (nan, inf, out of range, not a number at all, too large for the library it
goes to) is refused while the command line is parsed: exit 2, one line naming the option,
no traceback, nothing written. A good value is let through: the command then stops at
the next thing it checks (an input file that does not exist) or, where that is cheap,
runs to the end.

`grep -n "typer.Option" src/mi_llm/cli/*.py` finds them; test_every_numeric_option_is_listed
fails when a numeric option is added to these commands without a row here.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.helpers import error_line, names_option, record_exit, run_cli

DIALOGUES = [
    f'{{"id": "d{i}", "source": "s", "language": "en", "turns": [{{"role": "client", "text": "hi {i}"}}, {{"role": "counselor", "text": "hello"}}]}}'
    for i in range(6)
]
PREDICTIONS = (
    '{"prediction": "Tell me more.", "reference": "Say more."}\n{"prediction": "多久了？", "reference": "多久了呢？"}\n'
)

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
TIMEOUT_MAX = float(threading.TIMEOUT_MAX)  # socket.settimeout's limit (an OverflowError past it)


@dataclass(frozen=True)
class Opt:
    command: str  # key of COMMANDS
    name: str
    integer: bool
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def valid(self, x: float) -> bool:
        return (
            math.isfinite(x)
            and (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )


OPTIONS = [
    Opt("data build", "--train", False, ge=0),
    Opt("data build", "--test", False, ge=0),
    Opt("data build", "--seed", True),
    Opt("data build", "--history-budget", True, ge=0),
    Opt("evaluate", "--workers", True, ge=1),
    Opt("predict", "--max-new-tokens", True, ge=1, le=INT32_MAX),
    Opt("predict", "--temperature", False, ge=0),
    Opt("predict", "--top-p", False, gt=0, le=1),
    Opt("predict", "--top-k", True, ge=0, le=INT32_MAX),
    Opt("predict", "--repetition-penalty", False, gt=0),
    Opt("predict", "--seed", True, ge=0, le=SEED_MAX),
    Opt("predict", "--batch-size", True, ge=1, le=INT32_MAX),
    Opt("predict", "--limit", True, ge=1),
    Opt("predict", "--parallel", True, ge=1, le=INT32_MAX),
    Opt("predict", "--threads", True, ge=1, le=INT32_MAX),
    Opt("predict", "--concurrency", True, ge=1, le=INT32_MAX),
    Opt("train", "--epochs", False, gt=0),
    Opt("train", "--max-steps", True, ge=1, le=INT32_MAX),
    Opt("train", "--seed", True, ge=0, le=SEED_MAX),
    Opt("train", "--max-length", True, ge=16, le=INT32_MAX),
    Opt("train", "--lr", False, gt=0),
    Opt("train", "--grad-accum", True, ge=1, le=INT32_MAX),
    Opt("train", "--batch-size", True, ge=1, le=INT32_MAX),
    Opt("train", "--warmup-ratio", False, ge=0, lt=1),
    Opt("train", "--weight-decay", False, ge=0),
    Opt("train", "--max-grad-norm", False, ge=0),
    Opt("train", "--lora-r", True, ge=1, le=INT32_MAX),
    Opt("train", "--lora-alpha", False, gt=0),
    Opt("train", "--lora-dropout", False, ge=0, lt=1),
    Opt("train", "--save-steps", True, ge=1),
    Opt("train", "--save-total-limit", True, ge=1),
    Opt("train", "--log-steps", True, ge=1),
    Opt("train", "--logits-chunk", True, ge=0, le=INT32_MAX),
    Opt("miti annotate", "--port", True, ge=1, le=65535),
    Opt("miti blind", "--dialogues", True, ge=1),
    Opt("miti blind", "--seed", True),
    Opt("miti code", "--retries", True, ge=0, le=100),
    Opt("miti code-utterances", "--retries", True, ge=0, le=100),
    Opt("chat", "--max-tokens", True, ge=1, le=INT32_MAX),
    Opt("chat", "--temperature", False, ge=0),
    Opt("chat", "--top-p", False, gt=0, le=1),
    Opt("chat", "--seed", True, ge=0, le=SEED_MAX),
    Opt("chat", "--n-ctx", True, ge=1, le=INT32_MAX),
    Opt("chat", "--threads", True, ge=1, le=INT32_MAX),
    Opt("safety train", "--recall-target", False, gt=0, le=1),
    Opt("safety train", "--seed", True, ge=0, le=SEED_MAX),
    Opt("serve", "--port", True, ge=1, le=65535),
    Opt("serve", "--max-tokens-limit", True, ge=1, le=INT32_MAX),
    Opt("serve", "--default-max-tokens", True, ge=1, le=INT32_MAX),
    Opt("serve", "--max-request-bytes", True, ge=1),
    Opt("serve", "--rate-limit", False, ge=0),
    Opt("serve", "--rate-burst", True, ge=1, le=INT32_MAX),
    Opt("serve", "--max-queue", True, ge=1),
    Opt("serve", "--temperature", False, ge=0),
    Opt("serve", "--n-ctx", True, ge=1, le=INT32_MAX),
    Opt("serve", "--threads", True, ge=1, le=INT32_MAX),
    Opt("transcribe", "--concurrency", True, ge=1, le=INT32_MAX),
    Opt("transcribe", "--rpm", True, ge=1),
    Opt("transcribe", "--tpm", True, ge=1),
    Opt("transcribe", "--max-retries", True, ge=0, le=100),
    Opt("transcribe", "--max-repairs", True, ge=0, le=100),
    Opt("transcribe", "--timeout", False, gt=0, le=TIMEOUT_MAX),
    Opt("transcribe", "--limit", True, ge=1),
    Opt("transcribe", "--temperature", False, ge=0),
    Opt("transcribe", "--max-tokens", True, ge=1, le=INT32_MAX),
    Opt("transcribe", "--seed", True, ge=0, le=SEED_MAX),
    Opt("transcribe", "--min-client-similarity", False, ge=0, le=1),
    Opt("simulate", "--sessions", True, ge=1, le=100_000),
    Opt("simulate", "--max-rounds", True, ge=1, le=1000),
    Opt("simulate", "--seed", True, ge=0, le=SEED_MAX),
    Opt("simulate", "--counselor-max-tokens", True, ge=1, le=4096),
    Opt("simulate", "--client-max-tokens", True, ge=1, le=4096),
    Opt("simulate", "--client-temperature", False, ge=0, le=2),
    Opt("simulate", "--retries", True, ge=0, le=10),
    Opt("train", "--beta", False, gt=0),
    Opt("data build", "--augment-cr", True, ge=0, le=100),
    Opt("serve", "--parallel", True, ge=1, le=1024),
    Opt("prefs build", "--k", True, ge=2, le=64),
    Opt("prefs build", "--temperature", False, gt=0),
    Opt("prefs build", "--top-p", False, gt=0, le=1),
    Opt("prefs build", "--max-new-tokens", True, ge=1, le=INT32_MAX),
    Opt("prefs build", "--seed", True, ge=0, le=SEED_MAX),
    Opt("prefs build", "--batch-size", True, ge=1, le=INT32_MAX),
    Opt("prefs build", "--limit", True, ge=1, le=INT32_MAX),
    Opt("prefs build", "--min-margin", False, ge=0),
    Opt("prefs build", "--parallel", True, ge=1, le=INT32_MAX),
    Opt("prefs build", "--threads", True, ge=1, le=INT32_MAX),
]

MISSING = "no-such-input.jsonl"

# A few random values per option on top of the fixed edges: 62 options, two cores.
OPT_BAD = settings(max_examples=10, deadline=None)
OPT_GOOD = settings(max_examples=6, deadline=None)


def argv_for(command: str, tmp: Path) -> tuple[list[str], Path, str | None]:
    """(argv before the option, output path, what a good value's run stops at: None = success)."""
    out = tmp / "out"
    missing = str(tmp / MISSING)
    if command == "data build":
        f = tmp / "d.jsonl"
        f.write_text("\n".join(DIALOGUES) + "\n", encoding="utf-8")
        return ["data", "build", f, "-o", out], out, None
    if command == "evaluate":
        f = tmp / "p.jsonl"
        f.write_text(PREDICTIONS, encoding="utf-8")
        return ["evaluate", f, "-o", out], out, None
    if command == "predict":
        return ["predict", "--data", missing, "-o", out], out, MISSING
    if command == "train":
        return ["train", "--data", missing, "-o", out], out, MISSING
    if command == "miti annotate":
        return ["miti", "annotate", missing, "--coder-name", "x", "--export", "--out", out], out, MISSING
    if command == "miti blind":
        return ["miti", "blind", missing, "-o", out], out, MISSING
    if command == "miti code":
        return ["miti", "code", missing, "-o", out], out, MISSING
    if command == "miti code-utterances":
        return ["miti", "code-utterances", missing, "-o", out], out, MISSING
    if command in ("chat", "serve"):
        # --language is checked in the command, before the safety layer, the session
        # database (--db) or the model: the first thing after the command line
        return [command, "--language", "xx", "--db", out], out, "--language must be zh or en"
    if command == "safety train":
        return ["safety", "train", "--data", missing, "--no-bundled", "-o", out], out, MISSING
    if command == "transcribe":
        return ["transcribe", missing, "-o", out], out, MISSING
    if command == "simulate":
        return ["simulate", "--personas", missing, "-o", out], out, MISSING
    if command == "prefs build":
        return ["prefs", "build", "--data", missing, "-o", out], out, MISSING
    raise AssertionError(command)


def number_text(x: float | int, integer: bool) -> str:
    if integer:
        return str(int(x))
    return repr(float(x))


def bad_values(opt: Opt) -> st.SearchStrategy[str]:
    """Texts the option must refuse."""
    out: list[st.SearchStrategy[str]] = [
        st.sampled_from(["", "abc", "1e", "--", "0x10", "1,5", "one", " ", "nan%", "1 2"]),
    ]
    if opt.integer:
        out.append(st.sampled_from(["nan", "inf", "-inf", "1.5", "1e3", "NaN"]))
        if opt.ge is not None or opt.gt is not None:
            low = opt.ge if opt.ge is not None else opt.gt + 1
            out.append(st.integers(max_value=int(low) - 1, min_value=-(2**80)).map(str))
        if opt.le is not None:
            out.append(st.integers(min_value=int(opt.le) + 1, max_value=2**80).map(str))
    else:
        out.append(st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "1e309", "-1e309"]))
        if opt.ge is not None or opt.gt is not None:
            low = opt.ge if opt.ge is not None else opt.gt
            out.append(
                st.floats(max_value=low, allow_nan=False, allow_infinity=False, exclude_max=opt.ge is not None).map(
                    repr
                )
            )
        if opt.le is not None or opt.lt is not None:
            high = opt.le if opt.le is not None else opt.lt
            out.append(
                st.floats(min_value=high, allow_nan=False, allow_infinity=False, exclude_min=opt.le is not None).map(
                    repr
                )
            )
    return st.one_of(out)


def good_values(opt: Opt) -> st.SearchStrategy[str]:
    if opt.integer:
        lo = int(opt.ge if opt.ge is not None else (opt.gt + 1 if opt.gt is not None else -(2**40)))
        hi = int(opt.le if opt.le is not None else (opt.lt - 1 if opt.lt is not None else 2**70))
        return st.integers(lo, hi).map(str)
    return (
        st.floats(
            min_value=opt.ge if opt.ge is not None else opt.gt,
            max_value=opt.le if opt.le is not None else opt.lt,
            exclude_min=opt.ge is None and opt.gt is not None,
            exclude_max=opt.le is None and opt.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
        .filter(opt.valid)
        .map(repr)
    )


def _ids(opt: Opt) -> str:
    return f"{opt.command} {opt.name}"


def refused(opt: Opt, value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argv, out, _ = argv_for(opt.command, Path(tmp))
        r = run_cli([*argv, opt.name, value])
        names_option(r, opt.name)
        assert not out.exists(), f"{out} written despite a bad {opt.name}"


def edges(opt: Opt) -> list[str]:
    """The values just outside the range, and the non-finite ones."""
    out = ["nan", "inf", "-inf", "abc"]
    if opt.ge is not None:
        out.append(str(int(opt.ge) - 1) if opt.integer else repr(math.nextafter(opt.ge, -math.inf)))
    if opt.gt is not None:
        out.append(str(int(opt.gt)) if opt.integer else repr(float(opt.gt)))
    if opt.le is not None:
        out.append(str(int(opt.le) + 1) if opt.integer else repr(math.nextafter(opt.le, math.inf)))
    if opt.lt is not None:
        out.append(repr(float(opt.lt)))
    return out


@pytest.mark.parametrize("opt", OPTIONS, ids=_ids)
def test_edge_values_are_refused(opt):
    for value in edges(opt):
        refused(opt, value)


@pytest.mark.parametrize("opt", OPTIONS, ids=_ids)
@OPT_BAD
@given(data=st.data())
def test_bad_value_is_one_line_naming_the_option(opt, data):
    refused(opt, data.draw(bad_values(opt)))


@pytest.mark.parametrize("opt", OPTIONS, ids=_ids)
@OPT_GOOD
@given(data=st.data())
def test_good_value_is_accepted(opt, data):
    value = data.draw(good_values(opt))
    if (
        opt.command == "data build"
        and opt.name in ("--train", "--test")
        and not (0 < float(value) < 1)
        and float(value) != int(float(value))
    ):
        value = str(int(float(value)))  # counts are whole; fractions are below 1
    with tempfile.TemporaryDirectory() as tmp:
        argv, out, stop = argv_for(opt.command, Path(tmp))
        if opt.name == "--augment-cr":
            argv += ["--codes", "corpus"]  # augmenting needs the replies' codes
        r = run_cli([*argv, opt.name, value])
        record_exit(r)
        if stop is None:
            assert r.code == 0, f"{opt.name} {value}: {r.err}"
        else:
            assert stop in error_line(r) and opt.name not in error_line(r), r.err


# The command each function of the CLI modules implements.
COMMAND_OF = {
    "data.import_cmd": "data import",
    "data.download_cmd": "data download",
    "data.build_cmd": "data build",
    "evaluate.evaluate_cmd": "evaluate",
    "models.prepare_cmd": "models prepare",
    "models.list_cmd": "models list",
    "models.predict_cmd": "predict",
    "train.train_cmd": "train",
    "train.export_cmd": "export",
    "miti.score_cmd": "miti score",
    "miti.agree_cmd": "miti agree",
    "miti.annotate_cmd": "miti annotate",
    "miti.blind_cmd": "miti blind",
    "miti.unblind_cmd": "miti unblind",
    "miti_coder.code_cmd": "miti code",
    "miti_coder.code_utterances_cmd": "miti code-utterances",
    "miti_coder.train_coder_cmd": "miti train-coder",
    "miti_coder.code_client_cmd": "miti code-client",
    "miti_coder.train_client_coder_cmd": "miti train-client-coder",
    "serve.chat_cmd": "chat",
    "serve.serve_cmd": "serve",
    "serve.safety_check_cmd": "safety check",
    "serve.safety_eval_cmd": "safety eval",
    "serve.safety_flagged_cmd": "safety flagged",
    "serve.safety_train_cmd": "safety train",
    "transcribe.transcribe_cmd": "transcribe",
    "pipeline.run_cmd": "run",
    "pipeline.demo_cmd": "demo",
    "simulate.simulate_cmd": "simulate",
    "prefs.build_cmd": "prefs build",
    "prefs.export_cmd": "prefs export",
}


def numeric_options() -> set[tuple[str, str]]:
    """(command, --option) for every int/float option of every module of mi_llm.cli."""
    import importlib
    import inspect
    import pkgutil
    import typing

    import typer

    import mi_llm.cli

    # every module but __main__ (importing it runs the CLI) and options (the checks)
    modules = sorted(m.name for m in pkgutil.iter_modules(mi_llm.cli.__path__) if m.name not in ("__main__", "options"))
    assert {k.split(".")[0] for k in COMMAND_OF} <= set(modules), modules
    found = set()
    for module_name in modules:
        module = importlib.import_module(f"mi_llm.cli.{module_name}")
        for fname, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__:
                continue
            params = inspect.signature(fn).parameters
            options = {n: p.default for n, p in params.items() if isinstance(p.default, typer.models.OptionInfo)}
            if not options:
                continue
            key = f"{module_name}.{fname}"
            assert key in COMMAND_OF, (
                f"a new command function {key}: add it to COMMAND_OF (and its numeric options to OPTIONS)"
            )
            hints = typing.get_type_hints(fn)
            for name, info in options.items():
                kinds = set(typing.get_args(hints[name])) | {hints[name]}
                if kinds & {int, float}:
                    decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
                    found.add((COMMAND_OF[key], decls[0] if decls else "--" + name.replace("_", "-")))
    return found


def test_every_numeric_option_is_listed():
    """A numeric option added to these commands without a row in OPTIONS fails here."""
    found = numeric_options()
    listed = {(o.command, o.name) for o in OPTIONS}
    assert found <= listed, f"numeric options without a fuzz row: {sorted(found - listed)}"
    assert listed <= found, f"rows for options that are gone: {sorted(listed - found)}"


# ---------------------------------------------------------------- the reported cases


@pytest.mark.parametrize(
    "args", [["--train", "nan"], ["--train", "inf"], ["--test", "nan"], ["--test", "-inf"], ["--history-budget", "-1"]]
)
def test_reported_build_options(args):
    """From the issue: a traceback for nan/inf, a negative --history-budget accepted silently."""
    with tempfile.TemporaryDirectory() as tmp:
        argv, out, _ = argv_for("data build", Path(tmp))
        r = run_cli([*argv, *args])
        names_option(r, args[0])
        assert not out.exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["--temperature", "nan", "--timeout", "-5"], "--temperature"),
        (["--timeout", "-5"], "--timeout"),
        (["--timeout", "1e10"], "--timeout"),
        (["--rpm", "-5"], "--rpm"),
        (["--max-retries", "2000"], "--max-retries"),
        (["--min-client-similarity", "nan"], "--min-client-similarity"),
    ],
)
def test_reported_transcribe_options(args, option):
    """From the issue: `transcribe --temperature nan --timeout -5` was accepted; the first
    bad option is named, before the input file is read (it does not exist here)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv, out, _ = argv_for("transcribe", Path(tmp))
        line = names_option(run_cli([*argv, *args]), option)
        assert MISSING not in line and not out.exists()


@pytest.mark.parametrize(
    "command, args, option",
    [
        ("serve", ["--port", "0"], "--port"),
        ("serve", ["--port", "70000"], "--port"),
        ("serve", ["--max-tokens-limit", "0"], "--max-tokens-limit"),
        ("serve", ["--rate-limit", "inf"], "--rate-limit"),
        ("chat", ["--top-p", "0"], "--top-p"),
        ("chat", ["--seed", "-1"], "--seed"),
    ],
)
def test_reported_serve_options(command, args, option):
    """Refused while the command line is parsed: before --language (checked first in the
    command), the session database, the model or the server."""
    with tempfile.TemporaryDirectory() as tmp:
        argv, out, stop = argv_for(command, Path(tmp))
        line = names_option(run_cli([*argv, *args]), option)
        assert stop not in line and not out.exists()
