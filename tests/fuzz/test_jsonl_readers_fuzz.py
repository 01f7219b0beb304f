"""Every JSONL reader on broken lines: mi_llm.io and the readers built on it.

A valid three-line file of each schema gets one line broken: a value of another type, a
key removed or added, a line that is not a JSON object (not JSON at all, an array, a
string), nesting no schema has, escapes no UTF-8 file can hold. The command that reads
the file either accepts it (the change was harmless) or fails with exit 2 and one line
`FILE:K: what`, K being the broken line, and writes nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mi_llm.errors import InputError, MiLlmError
from tests.fuzz.helpers import FEW, FUZZ, bad_lines, dumps, error_line, located_at, mutated, record_exit, run_cli


def _session(i: int, language: str, codes: list[str | None], globals_: list[int], **extra: Any) -> dict[str, Any]:
    utts = [{"text": f"U{i}{j}.", "code": c} for j, c in enumerate(codes)]
    return {
        "id": f"d{i}",
        "source": "demo",
        "language": language,
        **extra,
        "turns": [
            {"role": "client", "text": f"C{i}."},
            {"role": "counselor", "text": " ".join(u["text"] for u in utts), "codes": utts},
        ],
        "miti_globals": dict(zip(("cct", "sst", "partnership", "empathy"), globals_)),
    }


# Every session has a reflection, a question, an adherent code and globals, so that one
# broken line leaves `miti agree` at least three sessions for each ICC.
DIALOGUES = [
    _session(1, "en", ["SR", "Q", "AF"], [3, 3, 4, 4], topic="smoking", style="mi"),
    _session(2, "zh", ["CR", "Q", "Seek", None], [2, 3, 3, 4], topic="sleep"),
    _session(3, "en", ["SR", "CR", "Q", "Confront"], [1, 2, 1, 2], meta={"note": [1, 2]}),
    _session(4, "en", ["CR", "Q", "Q", "EA"], [4, 4, 5, 5]),
]
# Uncoded dialogues, for the commands that carry their texts into what they write.
PLAIN_DIALOGUES = [
    {
        "id": "p1",
        "source": "demo",
        "language": "en",
        "topic": "smoking",
        "style": "raw",
        "turns": [
            {"role": "client", "text": "I smoke."},
            {"role": "counselor", "text": "Tell me more."},
            {"role": "client", "text": "Daily."},
        ],
    },
    {
        "id": "p2",
        "source": "demo",
        "language": "zh",
        "turns": [{"role": "client", "text": "我失眠。"}, {"role": "counselor", "text": "多久了？"}],
        "meta": {"file": "a.txt", "line": 3},
    },
    {
        "id": "p3",
        "source": "other",
        "language": "en",
        "turns": [
            {"role": "counselor", "text": "Hi."},
            {"role": "client", "text": "Hello."},
            {"role": "counselor", "text": "How are you?"},
        ],
    },
]
SAMPLES = [
    {
        "sample_id": "d1#1",
        "dialogue_id": "d1",
        "round": 1,
        "language": "en",
        "source": "demo",
        "topic": "smoking",
        "system": "You are an MI counselor.",
        "history": [],
        "query": "I smoke.",
        "response": "Tell me more.",
        "truncated_rounds": 0,
    },
    {
        "sample_id": "d2#1",
        "dialogue_id": "d2",
        "round": 1,
        "language": "zh",
        "source": "demo",
        "system": "你是咨询师。",
        "query": "我失眠。",
        "response": "多久了？",
    },
    {
        "sample_id": "d2#2",
        "dialogue_id": "d2",
        "round": 2,
        "language": "zh",
        "source": "demo",
        "system": "你是咨询师。",
        "history": [["我失眠。", "多久了？"]],
        "query": "一个月。",
        "response": "很辛苦。",
        "truncated_rounds": 0,
    },
]
PREDICTIONS = [
    {
        "sample_id": "d1#1",
        "prediction": "Tell me more about it.",
        "reference": "Tell me more.",
        "language": "en",
        "generation": {"do_sample": False, "max_new_tokens": 64},
        "model": "m",
        "backend": "hf",
        "finish_reason": "stop",
    },
    {
        "sample_id": "d2#1",
        "prediction": "多久了呢？",
        "reference": "多久了？",
        "language": "zh",
        "generation": {"do_sample": False, "max_new_tokens": 64},
    },
    {"sample_id": "d2#2", "prediction": "", "reference": "很辛苦。"},
]
LLAMAFACTORY_PREDICTIONS = [
    {"prompt": "user\nI smoke.", "predict": "Tell me more.", "label": "Say more."},
    {"prompt": "user\n我失眠。", "predict": "多久了？", "label": "多久了？"},
    {"prompt": "x", "predict": "y", "label": "z"},
]
UTTERANCES = [
    {"id": 1, "text": "Tell me more.", "language": "en", "context": "I smoke."},
    {"id": "u2", "text": "你想戒烟。"},
    {"id": 3, "text": "You could try patches.", "language": "en"},
]


def _write(tmp: Path, lines: list[str], name: str = "in.jsonl") -> Path:
    f = tmp / name
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


# Each reader behind its command: (base records, argv for an input file and an output path).
# A command whose valid input would start slow work (a model) is stopped right after the
# read by an option that fails only then: a harmless change gives that one-line error.
READERS: dict[str, tuple[list[dict[str, Any]], Callable[[Path, Path], list[str]], str | None]] = {
    "dialogues (data build)": (PLAIN_DIALOGUES, lambda f, out: ["data", "build", f, "-o", out, "--test", "1"], None),
    "dialogues (data import dialogues)": (
        PLAIN_DIALOGUES,
        lambda f, out: ["data", "import", "dialogues", f, "-o", out],
        None,
    ),
    "coded dialogues (data import dialogues)": (
        DIALOGUES,
        lambda f, out: ["data", "import", "dialogues", f, "-o", out],
        None,
    ),
    "coded sessions (miti score)": (DIALOGUES, lambda f, out: ["miti", "score", f, "-o", out], None),
    "coded sessions (miti agree)": (DIALOGUES, lambda f, out: ["miti", "agree", f, f"B={f}", "-o", out], None),
    "coded sessions (miti code)": (
        DIALOGUES,
        lambda f, out: ["miti", "code", f, "-o", out, "--base-url", "http://127.0.0.1:9"],
        "--base-url applies to an llm",
    ),
    "samples (predict)": (
        SAMPLES,
        lambda f, out: ["predict", "--data", f, "-o", out, "--backend", "no-such-backend"],
        "unknown backend",
    ),
    "predictions (evaluate)": (PREDICTIONS, lambda f, out: ["evaluate", f, "-o", out], None),
    "llamafactory predictions (evaluate)": (LLAMAFACTORY_PREDICTIONS, lambda f, out: ["evaluate", f, "-o", out], None),
    "utterances (miti code-utterances)": (
        UTTERANCES,
        lambda f, out: ["miti", "code-utterances", f, "-o", out, "--base-url", "http://127.0.0.1:9"],
        "--base-url applies to an llm",
    ),
}


def read_run(reader: str, lines: list[str], k: int | None):
    """Run the reader's command on `lines`; when it fails, the error names line k (1-based)."""
    records, argv, stop = READERS[reader]
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), lines)
        out = Path(tmp) / "out" / "result.json"
        r = run_cli(argv(f, out))
        record_exit(r)
        if r.code != 0:
            msg = error_line(r)
            if stop is None or stop not in msg:
                located_at(r, f, k)
            assert not out.exists() and not out.parent.exists(), f"{reader}: output left behind by a failed run"
        return r


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_line_mutated(reader, data):
    records = READERS[reader][0]
    k = data.draw(st.integers(0, len(records) - 1))
    lines = [dumps(r) for r in records]
    lines[k] = dumps(data.draw(mutated(records[k])))
    read_run(reader, lines, k + 1)


@pytest.mark.parametrize("reader", sorted(READERS))
@FEW
@given(k=st.integers(0, 3), bad=bad_lines)
def test_line_not_an_object(reader, k, bad):
    lines = [dumps(r) for r in READERS[reader][0]]
    lines.insert(k, bad)
    r = read_run(reader, lines, k + 1)
    assert r.code == 2


def test_miti_agree_two_sessions():
    """Two sessions by two coders are 4 ratings, fewer than the ICC's two-way ANOVA takes
    (pingouin asserted, a traceback): each ICC is null with a note saying what it needs."""
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), [dumps(r) for r in DIALOGUES[:2]])
        out = Path(tmp) / "o.json"
        r = run_cli(["miti", "agree", f, f"B={f}", "-o", out])
        assert r.code == 0, r.err
        scores = json.loads(out.read_text(encoding="utf-8"))["session_scores"]["scores"]
        for key, row in scores.items():
            assert row["icc2_1"] is None and row["note"].startswith("needs at least 3 sessions rated by every coder"), (
                key,
                row,
            )
        # a third coder makes 6 ratings, enough: identical codings agree perfectly
        r = run_cli(["miti", "agree", f, f"B={f}", f"C={f}", "-o", out])
        assert r.code == 0, r.err
        cct = json.loads(out.read_text(encoding="utf-8"))["session_scores"]["scores"]["cct"]
        assert cct["n"] == 2 and cct["icc3_1"] == pytest.approx(1.0), cct


@pytest.mark.parametrize("reader", sorted(READERS))
def test_nested_too_deep_and_lone_surrogate(reader):
    """Found by the fuzzing: a deeply nested value was a RecursionError (or, a little less
    deep, a file no stage could write back), a lone \\ud800 escape a UnicodeEncodeError."""
    records = READERS[reader][0]
    for depth in (150, 5000):
        lines = [dumps(r) for r in records]
        lines[1] = dumps(records[1])[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        r = read_run(reader, lines, 2)
        assert "nested more than" in error_line(r)
    lines = [dumps(r) for r in records]
    key = next(k for k, v in records[2].items() if isinstance(v, str))
    lines[2] = json.dumps({**records[2], key: "x"}).replace('"x"', '"x\\udc80"')
    r = read_run(reader, lines, 3)
    assert "surrogate" in error_line(r)


# ---------------------------------------------------------------- the readers themselves


@FUZZ
@given(k=st.integers(0, 2), data=st.data())
def test_iter_jsonl_and_read_models(k, data):
    """mi_llm.io: every bad line is an InputError at its line; nothing else escapes."""
    from mi_llm.build.samples import Sample
    from mi_llm.io import iter_jsonl, read_models

    lines = [dumps(r) for r in SAMPLES]
    lines[k] = data.draw(st.one_of(bad_lines, mutated(SAMPLES[k]).map(dumps)))
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), lines)
        for read in (lambda: list(iter_jsonl(f)), lambda: read_models(f, Sample)):
            try:
                read()
            except InputError as e:
                assert e.line == k + 1 and Path(e.path) == f, str(e)
                assert "\n" not in str(e)


@FEW
@given(junk=st.binary(min_size=1, max_size=8))
def test_iter_jsonl_undecodable(junk):
    from mi_llm.io import iter_jsonl

    data = (dumps(SAMPLES[0]) + "\n").encode() + junk + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "in.jsonl"
        f.write_bytes(data)
        try:
            list(iter_jsonl(f))
        except InputError as e:
            assert e.line is not None and e.line >= 2 and "\n" not in str(e), str(e)


def test_iter_jsonl_folder_and_missing():
    from mi_llm.io import iter_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(MiLlmError, match="is a folder"):
            list(iter_jsonl(tmp))
        with pytest.raises(MiLlmError, match="no such file"):
            list(iter_jsonl(Path(tmp) / "none.jsonl"))


@FEW
@given(data=st.data())
def test_sidecar_meta_broken(data):
    """predictions.jsonl.meta.json (read by evaluate): any JSON, or none, is one located line."""
    meta = {"settings": {"generation": {"do_sample": False}}, "complete": True, "model": "m"}
    text = data.draw(st.one_of(mutated(meta).map(dumps), bad_lines))
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), [dumps(r) for r in PREDICTIONS], "predictions.jsonl")
        side = Path(tmp) / "predictions.jsonl.meta.json"
        side.write_text(text, encoding="utf-8")
        out = Path(tmp) / "metrics.json"
        r = run_cli(["evaluate", f, "-o", out])
        if r.code != 0:
            located_at(r, side, None)
            assert not out.exists()


# What `mi-llm predict` writes (evaluate/predict.py `_record`): the pipeline's MITI stage
# puts each reply into its dialogue by dialogue_id and round.
ROUND_PREDICTIONS = [{**p, "dialogue_id": s["dialogue_id"], "round": s["round"]} for p, s in zip(PREDICTIONS, SAMPLES)]


@pytest.mark.parametrize(
    "bad, what",
    [
        ({"round": 1, "prediction": "a"}, "dialogue_id: Field required"),
        ({"dialogue_id": "d1", "round": "x", "prediction": "a"}, "round: Input should be a valid integer"),
        ({"dialogue_id": "d1", "round": None, "prediction": "a"}, "round: Input should be a valid integer"),
        ({"dialogue_id": "d1", "round": "2", "prediction": "a"}, "round: Input should be a valid integer"),
        ({"dialogue_id": "d1", "round": True, "prediction": "a"}, "round: Input should be a valid integer"),
        ({"dialogue_id": "d1", "round": 2.5, "prediction": "a"}, "round: Input should be a valid integer"),
        ({"dialogue_id": "d1", "round": 0, "prediction": "a"}, "round: Input should be greater than or equal to 1"),
        ({"dialogue_id": ["d1"], "round": 2, "prediction": "a"}, "dialogue_id: Input should be a valid string"),
        ({"dialogue_id": "d1", "round": 2}, "prediction: Field required"),
        ({"dialogue_id": "d1", "round": 2, "prediction": None}, "prediction: Input should be a valid string"),
        ({"dialogue_id": "d1", "round": 1, "prediction": "b"}, "round 1 of dialogue 'd1' repeats line 1"),
    ],
)
def test_predictions_by_round(bad, what):
    """mi_llm.miti.system_sessions.read_predictions_by_round (the pipeline's MITI stage), as found by
    fuzzing it: each broken line is an InputError at its line (a KeyError, ValueError or
    TypeError before; a round of "2" or true was coerced, a repeated round overwrote the
    first)."""
    from mi_llm.miti.system_sessions import read_predictions_by_round

    rows = [{"dialogue_id": "d1", "round": 1, "prediction": "a"}, bad]
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), [dumps(r) for r in rows])
        with pytest.raises(InputError) as err:
            read_predictions_by_round(f)
        assert err.value.line == 2 and str(err.value) == f"{f}:2: {what}"


def test_predictions_by_round_valid():
    from mi_llm.miti.system_sessions import read_predictions_by_round

    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), [dumps(r) for r in ROUND_PREDICTIONS])
        assert read_predictions_by_round(f) == {
            ("d1", 1): "Tell me more about it.",
            ("d2", 1): "多久了呢？",
            ("d2", 2): "",
        }


@FUZZ
@given(k=st.integers(0, 2), data=st.data())
def test_predictions_by_round_mutated(k, data):
    """Any one broken line of a predictions file: read, or an InputError at that line (or,
    for a round made equal to a later line's, at the later line, naming line k)."""
    from mi_llm.miti.system_sessions import read_predictions_by_round

    lines = [dumps(r) for r in ROUND_PREDICTIONS]
    lines[k] = data.draw(st.one_of(bad_lines, mutated(ROUND_PREDICTIONS[k]).map(dumps)))
    with tempfile.TemporaryDirectory() as tmp:
        f = _write(Path(tmp), lines)
        try:
            got = read_predictions_by_round(f)
        except InputError as e:
            assert Path(e.path) == f and "\n" not in str(e), str(e)
            assert e.line == k + 1 or (e.line > k + 1 and f"repeats line {k + 1}" in str(e)), str(e)
        else:
            assert len(got) == 3 and all(isinstance(v, str) for v in got.values())
