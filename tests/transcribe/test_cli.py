"""`mi-llm transcribe` as a user runs it: a subprocess against the local test server,
including a SIGKILL in the middle of a run and the rerun that must resume it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mi_llm.resources import demo_dialogues
from tests.transcribe.conftest import first_client, make_dialogue

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mi_llm", "transcribe", *args]


def env() -> dict[str, str]:
    e = dict(os.environ, COLUMNS="200", PYTHONPATH=str(REPO / "src"))
    e.pop("OPENAI_API_KEY", None)
    e.pop("OPENAI_BASE_URL", None)
    return e


def complete_ids(path: Path) -> list[str]:
    """Ids of the complete lines (a torn last line is not a record)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # whatever follows the last newline is torn
    return [json.loads(x)["id"] for x in lines if x.strip()]


def test_cli_run_summary_and_one_line_errors(server, write_inputs, tmp_path):
    raw = demo_dialogues(style="raw")[:3] + demo_dialogues(language="en", style="raw")[:2]
    bad = raw[1]
    server.script.scripts[first_client(bad)] = ["malformed"]
    src, out = write_inputs(raw), tmp_path / "mi.jsonl"
    prices = tmp_path / "prices.yaml"
    prices.write_text("test-model: {input: 1000, output: 2000}\n")
    r = subprocess.run(
        cli(
            str(src),
            "-o",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "test-model",
            "--prices",
            str(prices),
            "--max-repairs",
            "1",
        ),
        capture_output=True,
        text=True,
        env=env(),
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stderr and "from cache" in r.stderr and "failures in" in r.stderr
    assert sorted(complete_ids(out)) == sorted(d.id for d in raw if d.id != bad.id)
    assert complete_ids(Path(str(out) + ".failed.jsonl")) == [bad.id]
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert summary["stats"]["cost"] > 0 and summary["stats"]["failed"] == 1
    assert summary["client"]["base_url"] == server.base_url


def run_in_process(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    from mi_llm.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["transcribe", *args])
    return e.value.code, capsys.readouterr().err


def test_bad_input_is_one_line_exit_2(write_inputs, tmp_path, capsys, monkeypatch):
    src, out = write_inputs([make_dialogue("x")]), tmp_path / "mi.jsonl"
    code, err = run_in_process(capsys, monkeypatch, str(src), "-o", str(out), "--concurrency", "0")
    assert (
        code == 2 and err.strip() == "--concurrency must be at least 1 and at most 2147483647 (got 0)"
    )  # while parsing the command line
    code, err = run_in_process(capsys, monkeypatch, str(src), "-o", str(out), "--temperature", "nan")
    assert code == 2 and err.strip() == "--temperature must be a finite number (got nan)"
    missing = tmp_path / "none.jsonl"
    code, err = run_in_process(capsys, monkeypatch, str(missing), "-o", str(out))
    assert code == 2 and err.strip() == f"{missing}: no such file"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        make_dialogue("y").model_dump_json() + "\n" + '{"id": "z", "source": "s", "language": "fr", "turns": []}\n'
    )
    code, err = run_in_process(capsys, monkeypatch, str(bad), "-o", str(out))
    assert code == 2 and err.strip().startswith(f"{bad}:2: language")
    code, err = run_in_process(
        capsys, monkeypatch, str(src), "-o", str(out), "--base-url", "https://api.example.com/v1"
    )
    assert (
        code == 2
        and err.strip().splitlines()[-1]
        == "the openai backend needs an API key for api.example.com: set OPENAI_API_KEY"
    )
    prices = tmp_path / "p.yaml"
    prices.write_text("gpt-4o: {input: -1, output: 1}\n")
    code, err = run_in_process(capsys, monkeypatch, str(src), "-o", str(out), "--prices", str(prices))
    assert code == 2 and "gpt-4o: input: Input should be greater than or equal to 0" in err
    assert not out.exists() and not Path(str(out) + ".failed.jsonl").exists()  # no file touched


def test_code_with_a_missing_coder_fails_before_any_call(server, write_inputs, tmp_path):
    src = write_inputs([make_dialogue("x")])
    r = subprocess.run(
        cli(
            str(src),
            "-o",
            str(tmp_path / "mi.jsonl"),
            "--base-url",
            server.base_url,
            "--code",
            "--coder",
            str(tmp_path / "no-coder"),
        ),
        capture_output=True,
        text=True,
        env=env(),
    )
    assert r.returncode == 2 and "no such coder folder" in r.stderr and "Traceback" not in r.stderr
    assert server.calls == []


def _start(src: Path, out: Path, server, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli(
            str(src), "-o", str(out), "--base-url", server.base_url, "--concurrency", "3", "--max-repairs", "1", *extra
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        # as from a terminal: a job started in the background (`cmd &`) inherits
        # SIGINT ignored, and then Ctrl-C could not be tested
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `n` complete lines are written (the server holds the rest of the run, so the
    process cannot finish meanwhile); `timeout` only guards against a hang."""
    deadline = time.monotonic() + timeout
    while len(complete_ids(out)) < n:
        assert proc.poll() is None, f"finished too early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def test_sigkill_mid_run_then_resume(server, write_inputs, tmp_path):
    ds = [make_dialogue(f"k{i:02d}", "zh" if i % 2 else "en") for i in range(40)]
    doomed = {ds[4].id, ds[11].id, ds[25].id}
    for d in ds:
        if d.id in doomed:
            server.script.scripts[first_client(d)] = ["wrong_order"]
    # The first 8 requests are answered (at least 6 dialogues written: one doomed dialogue
    # takes 2); later ones wait until the process is dead, so it dies mid-run on any machine.
    server.script.hold_after = 8
    src, out = write_inputs(ds), tmp_path / "mi.jsonl"
    fail = Path(str(out) + ".failed.jsonl")

    proc = _start(src, out, server)
    _wait_for_lines(out, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    server.script.hold_after = None
    server.release()  # the held requests of the dead process are answered into closed sockets
    first_run = list(server.calls)
    written = set(complete_ids(out))
    assert 6 <= len(written) < len(ds) - len(doomed)
    # The kill could land in the middle of a write: make that case happen for sure.
    with open(out, "ab") as f:
        f.write(b'{"id": "k99", "source": "test", "langu')

    proc = _start(src, out, server)
    stdout, stderr = proc.communicate(timeout=300)  # a hang guard
    assert proc.returncode == 0, stderr
    assert "resuming" in stderr

    ok, failed = complete_ids(out), complete_ids(fail)
    assert out.read_bytes().endswith(b"\n") and b"k99" not in out.read_bytes()
    assert not [k for k, v in Counter(ok + failed).items() if v > 1], "a dialogue was written twice"
    assert sorted(ok + failed) == sorted(d.id for d in ds), "a dialogue was lost"
    assert set(failed) == doomed
    # Nothing already written was asked for again, and nothing answered before was paid again,
    # except requests that were in flight when the process died (at most --concurrency).
    second_run = server.calls[len(first_run) :]
    keys_written = {first_client(d) for d in ds if d.id in written}
    assert not [c for c in second_run if c.key in keys_written]
    answered_before = {c.body_sha for c in first_run if c.finished is not None}
    repeated = [c for c in second_run if c.body_sha in answered_before]
    assert len(repeated) <= 3


def test_ctrl_c_stops_cleanly(server, write_inputs, tmp_path):
    # Two requests are answered, the others held: the signal comes mid-run on any machine.
    ds = [make_dialogue(f"i{i}") for i in range(40)]
    server.script.hold_after = 2
    src, out = write_inputs(ds), tmp_path / "mi.jsonl"
    proc = _start(src, out, server)
    _wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)  # a hang guard: the held requests are cancelled
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    ids = complete_ids(out)
    assert out.read_bytes().endswith(b"\n") and len(ids) == len(set(ids)) >= 2
