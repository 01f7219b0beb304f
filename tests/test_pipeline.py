import json
import subprocess
import sys
from pathlib import Path

import pytest

from mi_llm.config import load_config
from mi_llm.errors import InputError
from mi_llm.stages import Stage, StageRunner

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.sources[0].kind == "demo" and demo.train_enabled
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert paper.split.train == 2000 and paper.split.test == 40 and len(paper.models) == 3
    opts = paper.train_options("m", "d", "o")
    assert (opts.lr, opts.lr_scheduler, opts.batch_size, opts.grad_accum, opts.epochs, opts.warmup_ratio) == (
        1e-4, "cosine", 1, 8, 3, 0.1)


def test_transcription_rewrites_only_what_the_split_uses():
    from mi_llm.config import ExperimentConfig
    from mi_llm.pipeline import dialogues_to_transcribe

    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert dialogues_to_transcribe(paper) == 2142  # 2,040 + 5% for rewrites that fail validation
    src = [{"kind": "demo"}]
    assert dialogues_to_transcribe(ExperimentConfig(sources=src, split={"train": 0.8, "test": 0.2})) is None
    assert dialogues_to_transcribe(ExperimentConfig(sources=src, transcribe={"dialogues": 7})) == 7


@pytest.mark.parametrize("body, where, what", [
    ("sources:\n  - kind: demo\ntrain:\n  lr: -1\n", None, "lr"),
    ("sources:\n  - kind: cpsycound\n", 2, "needs a path"),
    ("sources:\n  - kind: demo\nsplit:\n  tset: 3\n", 4, "tset"),
    ("sources: [\n", None, "invalid YAML"),
    ("sources:\n  - kind: demo\ngeneration:\n  preset: nosuch\n", None, "unknown generation preset"),
])
def test_config_errors_are_located(tmp_path, body, where, what):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_config(p)
    assert what in str(e.value)
    if where:
        assert str(e.value).startswith(f"{p}:{where}:")


def test_stage_runner_skips_up_to_date_and_reruns_on_change(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out.txt"
    calls = []

    def make(params):
        def run():
            calls.append(params)
            out.write_text(src.read_text() * 2)
        return Stage("double", run, [out], inputs=[src], params=params)

    runner = StageRunner(tmp_path / "run")
    assert not runner(make({"k": 1})).skipped
    assert runner(make({"k": 1})).skipped  # same settings and inputs
    assert not runner(make({"k": 2})).skipped  # settings changed
    src.write_text("b")
    assert not runner(make({"k": 2})).skipped  # input changed
    out.unlink()
    assert not runner(make({"k": 2})).skipped  # output missing
    assert len(calls) == 4 and out.read_text() == "bb"


def test_stage_failure_records_nothing(tmp_path):
    def boom():
        raise RuntimeError("crash")

    runner = StageRunner(tmp_path)
    with pytest.raises(RuntimeError):
        runner(Stage("x", boom, [tmp_path / "o"]))
    assert not (tmp_path / ".stages" / "x.json").exists()


@pytest.mark.integration
def test_tiny_experiment_end_to_end_and_resume(tmp_path):
    """The whole pipeline on the embedded model, cut to a few samples and steps."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\nsources:\n  - kind: demo\n    style: mi\n"
        "split: {train: 4, test: 1, seed: 3}\n"
        "models:\n  - name: gemma-3-270m\n    backend: hf\n"
        "train: {max_steps: 1, max_length: 256, grad_accum: 1, on_overflow: skip}\n"
        "generation: {max_new_tokens: 4, limit: 3, batch_size: 4}\n"
        "miti: {enabled: false}\n"
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mi_llm", "run", str(cfg), "--run-dir", str(run)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert {row["system"] for row in summary["automatic"]} == {"base", "finetuned"}
    assert all(row["n"] == 3 for row in summary["automatic"])
    assert (run / "report" / "index.html").is_file()
    assert (run / "models" / "gemma-3-270m" / "adapter" / "adapter_config.json").is_file()
    # a second run finds every stage up to date
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "0 stage(s) ran" in r2.stderr
