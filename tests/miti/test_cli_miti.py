"""`mi-llm miti score / agree / annotate --export`: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from mi_llm.cli.miti import register
from mi_llm.errors import MiLlmError
from tests.miti.helpers import coded, coded_dict


def run(*args):
    """The real command line in a subprocess: exit codes and one-line errors as users see them."""
    return subprocess.run([sys.executable, "-m", "mi_llm", "miti", *args], capture_output=True, text=True)


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    return app


def fails(prefix, *args) -> str:
    """In-process: the command raises the user error that main() prints as one line, exit code 2."""
    r = CliRunner().invoke(_app(), ["miti", *args])
    assert isinstance(r.exception, MiLlmError), (r.exception, r.output)
    assert str(r.exception).startswith(prefix), str(r.exception)
    return str(r.exception)


def invoke(*args):
    """Successful runs in-process (the statistics libraries are imported once, not per run)."""
    r = CliRunner().invoke(_app(), ["miti", *args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    r.returncode = r.exit_code
    return r


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def one_line_error(r, prefix):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def test_score_writes_json_with_nulls(tmp_path):
    src = write(
        tmp_path / "coded.jsonl",
        [
            coded_dict([["SR", "Q"], ["CR"]], {"cct": 4, "sst": 4, "partnership": 4, "empathy": 5}, id="a"),
            coded_dict([["GI"]], id="b"),  # no globals, no reflections, no questions
        ],
    )
    out = tmp_path / "miti.json"
    r = invoke("score", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    sys_ = d["systems"]["coded"]
    assert sys_["n_sessions"] == 2
    a, b = sys_["sessions"]
    assert a["summary"]["pct_cr"] == 0.5 and a["summary"]["r_q"] == 2.0 and a["summary"]["technical"] == 4.0
    assert b["summary"]["r_q"] is None and b["summary"]["technical"] is None and b["globals"] is None
    assert sys_["aggregate"]["r_q"] == {**sys_["aggregate"]["r_q"], "n": 1, "missing": 1, "mean": 2.0}
    assert d["mi_adherent_ratio"]["formula"] == "(AF + Seek + EA) / (AF + Seek + EA + Persuade + Confront)"
    assert any("r_q undefined in 1 of 2" in n for n in d["notes"])
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    assert "Reflection : Question" in r.stderr  # the rich table
    # the one miti.json schema (mi_llm.miti.results), also written by the pipeline and transcribe --code
    assert d["schema_version"] == 2 and d["coder"] is None and sys_["files"] == [str(src)]
    assert "level" in sys_["aggregate"]["r_q"] and "level" not in sys_["aggregate"]["mia"]  # as aggregate() gives it
    from mi_llm.miti.results import read_miti_scores

    assert read_miti_scores(out).systems["coded"].sessions[0].summary.pct_cr == 0.5


def test_score_named_systems_group_by_and_ratio(tmp_path):
    m = write(tmp_path / "m.jsonl", [coded_dict([["PwP"], ["Persuade"]], id="m1")])
    ref = write(tmp_path / "r.jsonl", [coded_dict([["AF"], ["Persuade"]], id="r1")])
    out = tmp_path / "miti.json"
    r = invoke(
        "score", f"model={m}", f"reference={ref}", "-o", str(out), "--ratio", "pwp-adherent", "--group-by", "style"
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert list(d["systems"]) == ["model/raw", "reference/raw"]
    assert d["systems"]["model/raw"]["sessions"][0]["summary"]["mi_adherent_ratio"] == 0.5
    assert d["comparison"]["systems"] == ["model/raw", "reference/raw"]


def test_score_bad_inputs(tmp_path):
    good = coded_dict([["Q"]], id="a")
    bad_code = coded_dict([["Q"]], id="b")
    bad_code["turns"][1]["codes"][0]["code"] = "Question"
    src = write(tmp_path / "c.jsonl", [good, bad_code])
    # Through the real entry point: one line FILE:LINE, exit code 2, no traceback, no output file.
    line = one_line_error(
        run("score", str(src), "-o", str(tmp_path / "o.json")),
        f"{src}:2: turn 2, utterance 1: unknown MITI code 'Question'",
    )
    assert "did you mean 'Q'" in line
    assert not (tmp_path / "o.json").exists()
    o = str(tmp_path / "o.json")

    bad_rating = {**coded_dict([["Q"]], id="c"), "miti_globals": {"cct": 7, "sst": 3, "partnership": 3, "empathy": 3}}
    src = write(tmp_path / "r.jsonl", [bad_rating])
    fails(f"{src}:1: global rating cct=7 is outside 1-5", "score", str(src), "-o", o)
    src = write(tmp_path / "z.jsonl", [{**good, "miti_globals": {"cct": 0, "sst": 3, "partnership": 3, "empathy": 3}}])
    fails(f"{src}:1: global rating cct=0", "score", str(src), "-o", o)
    src = write(tmp_path / "y.jsonl", [{**good, "miti_globals": {"cct": 3, "sst": 3, "partnership": 3}}])
    fails(f"{src}:1: miti_globals lacks empathy", "score", str(src), "-o", o)

    empty = {"id": "e", "source": "t", "language": "en", "turns": [{"role": "client", "text": "hello?"}]}
    src = write(tmp_path / "e.jsonl", [good, empty])
    fails(f"{src}:2: session 'e' is empty", "score", str(src), "-o", o)
    src = tmp_path / "blank.jsonl"
    src.write_text("\n")
    fails(f"{src}: no sessions", "score", str(src), "-o", o)
    fails(f"{tmp_path / 'nope.jsonl'}: no such file", "score", str(tmp_path / "nope.jsonl"), "-o", o)
    src = write(tmp_path / "ok.jsonl", [good])
    fails("unknown MI-adherent ratio definition", "score", str(src), "-o", o, "--ratio", "bogus")
    fails("--group-by must be", "score", str(src), "-o", o, "--group-by", "colour")
    assert not (tmp_path / "o.json").exists()


def test_score_uncoded_turn(tmp_path):
    d = coded_dict([["Q"]], id="u")
    d["turns"].append({"role": "counselor", "text": "More?"})
    src = write(tmp_path / "u.jsonl", [d])
    fails(f"{src}:1: session 'u': counselor turn 3 is not coded", "score", str(src), "-o", str(tmp_path / "o.json"))
    r = invoke("score", str(src), "-o", str(tmp_path / "o.json"), "--allow-uncoded")
    assert r.returncode == 0, r.stderr


def test_agree_cli(tmp_path):
    a = write(tmp_path / "a.jsonl", [coded_dict([["Q", "SR"], ["CR"]], id="x")])
    b = write(tmp_path / "b.jsonl", [coded_dict([["Q", "CR"], ["CR"]], id="x")])
    out = tmp_path / "agree.json"
    r = invoke("agree", str(a), str(b), "-o", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["utterances"]["overall"]["units"] == 3 and d["utterances"]["overall"][
        "percent_agreement"
    ] == pytest.approx(2 / 3)
    assert [c["name"] for c in d["coders"]] == ["a", "b"]
    assert "Cohen's kappa" in r.stderr and "ICC(2,1)" in r.stderr

    split = write(
        tmp_path / "s.jsonl",
        [coded_dict([["Q"], ["CR"]], id="x", texts=[["Utterance 0.0. Utterance 0.1."], ["Utterance 1.0."]])],
    )
    line = one_line_error(run("agree", str(a), str(split)), "the coders split 1 counselor turn(s)")
    assert "--align text" in line
    r = invoke("agree", str(a), str(split), "--align", "text")
    assert r.returncode == 0, r.stderr

    fails("give at least two", "agree", str(a))
    other = write(tmp_path / "o.jsonl", [coded_dict([["Q"]], id="y")])
    fails("the coders' files share no session id", "agree", str(a), str(other))


def test_annotate_rejects_empty_session_and_exports_from_autosave(tmp_path):
    empty = {"id": "e", "source": "t", "language": "en", "turns": [{"role": "client", "text": "hello?"}]}
    src = write(tmp_path / "s.jsonl", [coded_dict([["Q"]], id="a"), empty])
    fails(f"{src}:2: session 'e' is empty", "annotate", str(src), "--coder-name", "z", "--export")
    src = write(tmp_path / "s.jsonl", [coded_dict([["Q"]], id="a")])
    r = invoke("annotate", str(src), "--coder-name", "z", "--export")
    assert r.returncode == 0, r.stderr
    assert "exported 0 session(s)" in r.stderr and (tmp_path / "s.z.coded.jsonl").exists()


def test_coder_commands_module_is_optional():
    # register() imports mi_llm.cli.miti_coder only if it exists; `miti --help` works either way.
    r = run("--help")
    assert r.returncode == 0 and "score" in r.stdout and "agree" in r.stdout and "annotate" in r.stdout


def test_helpers_are_valid():
    assert coded([["Q"]]).turns[1].codes[0].code == "Q"
