"""The `mi-llm train` / `mi-llm export` commands: one-line errors, Ctrl-C then --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True, **kw)


def test_missing_data_is_one_line_exit_2(tmp_path):
    r = run("train", "--data", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'none.jsonl'}: no such file or folder"
    r = run("export", "--adapter", str(tmp_path / "nope"), "-o", str(tmp_path / "m"))
    assert r.returncode == 2 and "no such adapter folder" in r.stderr and "Traceback" not in r.stderr


def test_bad_option_is_one_line(tmp_path, build_dir):
    r = run("train", "--data", str(build_dir), "-o", str(tmp_path / "o"), "--records", "turns")
    assert r.returncode == 2 and r.stderr.strip().startswith("bad option: records")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_gemma, build_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_gemma), "--data", str(build_dir), "-o", str(out), "--max-steps", "30",
            "--grad-accum", "1", "--save-steps", "1000"]
    p = subprocess.Popen([sys.executable, "-m", "mi_llm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "--resume" in err
    state = json.loads(next((out / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert 2 <= state["step"] < 30
    r = run(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(1, 31))  # each step logged once
    assert (out / "adapter_model.safetensors").is_file()
