"""Output paths that cannot be written: a folder where a file goes, a file where a folder
goes, a folder without write permission. Each writing command fails in one line that
names the path (and the option), exit 2, no traceback, and leaves no output, not even
the outputs it could have written (evaluate's metrics.json when --per-sample is bad).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.helpers import FEW, error_line, run_cli

DIALOGUES = "".join(
    f'{{"id": "d{i}", "source": "s", "language": "en", "turns": [{{"role": "client", "text": "hi"}}, {{"role": "counselor", "text": "hello"}}]}}\n'
    for i in range(4)
)
PREDICTIONS = (
    '{"prediction": "Tell me more.", "reference": "Say more."}\n{"prediction": "多久了？", "reference": "多久了呢？"}\n'
)
CODED = (
    '{"id": "s1", "source": "s", "language": "en", "turns": [{"role": "client", "text": "I smoke."}, {"role": "counselor", '
    '"text": "You smoke.", "codes": [{"text": "You smoke.", "code": "SR"}]}], "miti_globals": {"cct": 3, "sst": 3, "partnership": 3, "empathy": 3}}\n'
)


def layout(tmp: Path, kind: str) -> Path:
    """An output path that cannot be written, of the given kind."""
    if kind == "folder":
        p = tmp / "taken"
        p.mkdir()
        (p / "keep.txt").write_text("x")
        return p
    if kind == "under a file":
        (tmp / "plain.txt").write_text("x")
        return tmp / "plain.txt" / "sub" / "out.json"
    if kind == "name too long":
        return tmp / ("x" * 300 + ".json")
    if kind == "read-only folder":
        d = tmp / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d / "out.json"
    raise AssertionError(kind)


KINDS = ["folder", "under a file", "name too long", "read-only folder"]


def _skip_if_root(kind: str) -> None:
    if kind == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")


def check_failed(r, bad: Path, *others: Path) -> None:
    msg = error_line(r)
    assert str(bad) in msg or str(bad.parent) in msg, f"the error does not name {bad}: {msg!r}"
    for p in others:
        assert not p.exists(), f"{p} written although the run failed"


def _inputs(tmp: Path) -> dict[str, Path]:
    files = {"dialogues": tmp / "d.jsonl", "predictions": tmp / "p.jsonl", "coded": tmp / "c.jsonl"}
    files["dialogues"].write_text(DIALOGUES, encoding="utf-8")
    files["predictions"].write_text(PREDICTIONS, encoding="utf-8")
    files["coded"].write_text(CODED, encoding="utf-8")
    return files


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["data import", "data build", "evaluate -o", "evaluate --per-sample", "miti score"])
def test_unwritable_output(command, kind):
    _skip_if_root(kind)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = _inputs(tmp)
        bad = layout(tmp, kind)
        others: list[Path] = []
        if command == "data import":
            argv = ["data", "import", "dialogues", files["dialogues"], "-o", bad]
        elif command == "data build":
            argv = ["data", "build", files["dialogues"], "-o", bad if kind != "folder" else tmp / "d.jsonl"]
            bad = bad if kind != "folder" else tmp / "d.jsonl"  # an existing *file* is what -o cannot be here
        elif command == "evaluate -o":
            argv = ["evaluate", files["predictions"], "-o", bad, "--per-sample", tmp / "per.jsonl"]
            others = [tmp / "per.jsonl"]
        elif command == "evaluate --per-sample":
            argv = ["evaluate", files["predictions"], "-o", tmp / "metrics.json", "--per-sample", bad]
            others = [tmp / "metrics.json"]
        else:
            argv = ["miti", "score", files["coded"], "-o", bad]
        try:
            r = run_cli(argv)
        finally:
            if kind == "read-only folder":
                bad.parent.chmod(0o700)
        check_failed(r, bad, *others)
        if kind == "folder":
            assert sorted(p.name for p in (tmp / "taken").iterdir()) == ["keep.txt"]


def test_evaluate_reported_cases():
    """From the issue: an unwritable -o and a folder as --per-sample gave tracebacks."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = _inputs(tmp)
        (tmp / "plain.txt").write_text("x")
        r = run_cli(["evaluate", files["predictions"], "-o", tmp / "plain.txt" / "m.json"])
        assert error_line(r).startswith(f"-o {tmp / 'plain.txt' / 'm.json'}: ")
        (tmp / "per").mkdir()
        r = run_cli(["evaluate", files["predictions"], "-o", tmp / "m.json", "--per-sample", tmp / "per"])
        assert error_line(r) == f"--per-sample {tmp / 'per'}: is a folder, not a file"
        assert not (tmp / "m.json").exists()


@FEW
@given(parts=st.lists(st.sampled_from(["file", "dir", "new"]), min_size=1, max_size=4))
def test_atomic_writer_any_layout(parts):
    """mi_llm.io.atomic_writer / check_writable under any mix of files, folders and new
    names: writes the file, or refuses in one line before anything is written."""
    from mi_llm.errors import MiLlmError
    from mi_llm.io import check_writable, write_json

    with tempfile.TemporaryDirectory() as t:
        path = Path(t)
        for i, part in enumerate(parts):
            path = path / f"p{i}"
            if part == "file" and not path.parent.is_file():
                path.write_text("x") if path.parent.is_dir() else None
            elif part == "dir" and path.parent.is_dir():
                path.mkdir()
        before = sorted(str(p) for p in Path(t).rglob("*"))
        try:
            check_writable(path)
            checked = True
        except MiLlmError as e:
            checked = False
            assert "\n" not in str(e) and str(path) in str(e)
        try:
            write_json(path, {"a": 1})
            assert checked, "check_writable refused a path that could be written"
            assert path.read_text().startswith("{")
        except MiLlmError as e:
            assert not checked or path.is_dir(), f"checked writable but failed: {e}"
            assert "\n" not in str(e) and str(path) in str(e)
            assert sorted(str(p) for p in Path(t).rglob("*")) == before, "a failed write left files"
