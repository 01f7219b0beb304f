"""The training loop on a tiny model: outputs, resume equivalence, option checks."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from mi_llm.errors import MiLlmError
from mi_llm.train.config import TrainConfig
from mi_llm.train.sft import train


def cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output=str(out),
        max_steps=4,
        grad_accum=2,
        save_steps=100,
        lora_r=4,
        lora_alpha=8,
    )
    base.update(kw)
    return TrainConfig(**base)


def adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


def losses(out):
    return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_train_writes_adapter_log_config(tiny_gemma, build_dir, tmp_path):
    out = tmp_path / "run"
    r = train(cfg(tiny_gemma, build_dir, out), show_progress=False)
    assert r.steps == 4 and not r.interrupted and r.tokens > 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed"} <= set(log[0])
    assert log[-1]["tokens"] == r.tokens and log[0]["lr"] == 0.0  # warm-up starts at 0
    conf = json.loads((out / "train_config.json").read_text())
    assert conf["config"]["lr"] == 1e-4 and conf["config"]["lr_scheduler"] == "cosine"
    assert conf["result"]["finished"] and conf["schedule"]["total_steps"] == 4
    assert conf["result"]["shared_prefix"] and conf["result"]["prefix_tokens_saved"] > 0
    assert not (out / "checkpoints").exists()  # removed once the adapter is saved
    # every LoRA weight moved from its initialisation (B starts at zero)
    assert all(v.abs().sum() > 0 for k, v in adapter(out).items() if "lora_B" in k)
    with pytest.raises(MiLlmError, match="already holds a training run"):
        train(cfg(tiny_gemma, build_dir, out), show_progress=False)
    with pytest.raises(MiLlmError, match="already finished"):
        train(cfg(tiny_gemma, build_dir, out), resume=True, show_progress=False)


def test_resume_after_sigterm_equals_uninterrupted_run(tiny_gemma, build_dir, tmp_path):
    ref = tmp_path / "ref"
    train(cfg(tiny_gemma, build_dir, ref, max_steps=5), show_progress=False)

    out = tmp_path / "cut"

    def kill_at_2(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: finish the step, checkpoint, stop

    r = train(cfg(tiny_gemma, build_dir, out, max_steps=5), show_progress=False, on_step=kill_at_2)
    assert r.interrupted and r.steps == 2
    assert (out / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    r2 = train(cfg(tiny_gemma, build_dir, out, max_steps=5), resume=True, show_progress=False)
    assert r2.steps == 5 and not r2.interrupted
    a, b = adapter(ref), adapter(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-7)
    assert losses(out) == pytest.approx(losses(ref), abs=1e-6)


def test_resume_refuses_other_options(tiny_gemma, build_dir, tmp_path):
    out = tmp_path / "cut"
    train(
        cfg(tiny_gemma, build_dir, out, max_steps=3, save_steps=1),
        show_progress=False,
        on_step=lambda s: os.kill(os.getpid(), signal.SIGTERM) if s == 1 else None,
    )
    with pytest.raises(MiLlmError, match=r"lr 0.0001 -> 0.001"):
        train(cfg(tiny_gemma, build_dir, out, max_steps=3, lr=1e-3), resume=True, show_progress=False)


def test_dialogue_records_and_padded_batches(tiny_gemma, build_dir, tmp_path):
    out = tmp_path / "dlg"
    r = train(cfg(tiny_gemma, build_dir, out, records="dialogues", batch_size=2, max_steps=2), show_progress=False)
    conf = json.loads((out / "train_config.json").read_text())
    assert conf["data"]["examples"] == 6  # one record per dialogue
    assert r.steps == 2 and all(x == x for x in losses(out))  # finite losses


def test_bad_model_and_data(tiny_gemma, build_dir, tmp_path):
    with pytest.raises(MiLlmError, match="no such file or folder"):
        train(cfg(tiny_gemma, tmp_path / "missing.jsonl", tmp_path / "o"), show_progress=False)
    with pytest.raises(MiLlmError, match="LoRA on"):
        train(cfg(tiny_gemma, build_dir, tmp_path / "o2", target_modules="no_such_proj"), show_progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes_equal_one_process_with_double_accumulation(tiny_gemma, build_dir, tmp_path):
    """DDP through accelerate (gloo, 2 CPU processes, grad-accum 2) sees the same 4
    micro-batches per optimizer step as one process with grad-accum 4: same adapter."""
    import subprocess
    import sys
    from pathlib import Path

    common = [
        "--model",
        str(tiny_gemma),
        "--data",
        str(build_dir),
        "--max-steps",
        "3",
        "--lora-dropout",
        "0",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--precision",
        "fp32",  # bf16 rounds the two summation orders differently
    ]
    one = tmp_path / "one"
    train(
        cfg(tiny_gemma, build_dir, one, max_steps=3, grad_accum=4, lora_dropout=0.0, precision="fp32"),
        show_progress=False,
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "mi_llm",
            "train",
            *common,
            "--grad-accum",
            "2",
            "-o",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    conf = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert conf["schedule"]["processes"] == 2 and "MULTI_CPU" in conf["runtime"]["distributed"]
    a, b = adapter(one), adapter(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    assert losses(tmp_path / "ddp") == pytest.approx(losses(one), abs=1e-5)
    assert r.stderr.count("trained 3 steps") + r.stdout.count("trained 3 steps") == 1  # main process reports


def _loss_of_adapter(model, adapter_dir, examples) -> float:
    """Token loss of the saved adapter on `examples` (sum over target tokens / their count)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model))
    peft = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    total = 0.0
    with torch.no_grad():
        for e in examples:
            out = peft(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            total += float(out.loss) * e.n_targets  # transformers averages over the target tokens
    return total / sum(e.n_targets for e in examples)


def test_overfitting_four_samples_drives_the_loss_down(tiny_gemma_learnable, build_dir, tmp_path):
    """Every step sees the same 4 samples (batch 1, grad-accum 4): a training loop that learns
    drives their loss far down; one whose updates are lost, misdirected or not saved does not."""
    from mi_llm.build.samples import read_samples
    from mi_llm.io import write_jsonl
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.train.data import encode_samples

    four = read_samples(build_dir / "samples.train.jsonl")[:4]
    data = tmp_path / "four.jsonl"
    write_jsonl(data, [s.model_dump() for s in four])
    out = tmp_path / "run"
    r = train(
        cfg(
            tiny_gemma_learnable,
            data,
            out,
            max_steps=30,
            grad_accum=4,
            lr=1e-2,
            warmup_ratio=0.0,
            lr_scheduler="constant_with_warmup",
            lora_r=8,
            lora_alpha=16,
        ),
        show_progress=False,
    )
    log = losses(out)
    assert r.steps == 30 and len(log) == 30
    assert log[-1] < 0.5 * log[0], log  # measured: 7.1 -> 1.5
    # the saved adapter carries what was learned (its loss is below the last step's, which
    # was measured before that step's update)
    examples, _ = encode_samples(four, load_tokenizer(str(tiny_gemma_learnable)), 1024, "rounds")
    assert _loss_of_adapter(tiny_gemma_learnable, out, examples) < 0.5 * log[0]
