"""tools/gpu_check.py (`make gpu-check`): the no-CUDA message, and its whole path as a CPU dry run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_skipped_and_exits_0(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_tool().main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("gpu-check skipped: no CUDA device")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "skipped" and "checks" not in report


@pytest.mark.slow
def test_cpu_dry_run_trains_predicts_and_reloads(tmp_path):
    """The same steps as on a GPU, on the CPU with a tiny model: SFT in bf16 through accelerate
    launch, hf predictions, the adapter reloaded with the same greedy output."""
    out = tmp_path / "gc"
    args = ["--device", "cpu", "--out", str(out), "--hidden", "32", "--layers", "2", "--steps", "4"]
    args += ["--train-dialogues", "4", "--prompts", "2", "--max-new-tokens", "6"]
    assert load_tool().main(args) == 0
    report = json.loads((out / "report.json").read_text())
    status = {c["name"]: c for c in report["checks"]}
    assert report["status"] == "ok", report
    sft = status["LoRA SFT, bf16, accelerate launch"]
    assert sft["status"] == "ok" and sft["detail"]["precision"] == "bf16" and sft["detail"]["steps"] == 4
    assert status["predict, hf on cpu"]["detail"]["predictions"] == 2
    reload = status["adapter reloaded on CPU: same greedy output as on cpu"]
    assert reload["status"] == "ok" and reload["detail"]["identical"] == 2
    # what cannot run here is skipped with a reason, never silently passed
    assert all(c["reason"] for c in report["checks"] if c["status"] == "skipped")
    assert "| LoRA SFT, bf16, accelerate launch | ok |" in (out / "report.md").read_text()
