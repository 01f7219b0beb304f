"""The LLaMA-Factory YAML carries the same hyper-parameters and data."""

from __future__ import annotations

import json

import yaml

from mi_llm.llm.resolve import resolve_model
from mi_llm.train.config import TrainConfig
from mi_llm.train.data import load_train_data
from mi_llm.train.llamafactory import write_llamafactory_yaml
from tests.train.conftest import SYSTEM


def test_yaml_from_build_folder(tiny_gemma, build_dir, tmp_path):
    cfg = TrainConfig(
        model=str(tiny_gemma),
        data=str(build_dir),
        output=str(tmp_path / "run"),
        max_length=512,
        lora_r=16,
        lora_alpha=32,
        max_steps=7,
    )
    path = tmp_path / "lf.yaml"
    write_llamafactory_yaml(path, cfg, resolve_model(str(tiny_gemma)), load_train_data(build_dir), gpu=False)
    c = yaml.safe_load(path.read_text())
    assert c["stage"] == "sft" and c["finetuning_type"] == "lora" and c["do_train"] is True
    assert c["template"] == "gemma" and c["lora_target"] == "all"
    assert (c["lora_rank"], c["lora_alpha"], c["lora_dropout"]) == (16, 32, 0.0)
    assert c["dataset"] == "mi_train" and c["dataset_dir"] == str((build_dir / "llamafactory").resolve())
    assert c["mask_history"] is True and c["cutoff_len"] == 512
    assert (c["learning_rate"], c["lr_scheduler_type"], c["warmup_ratio"]) == (1e-4, "cosine", 0.1)
    assert (c["per_device_train_batch_size"], c["gradient_accumulation_steps"], c["num_train_epochs"]) == (1, 8, 3.0)
    assert c["max_steps"] == 7 and c["use_cpu"] is True and c["bf16"] is False
    assert c["model_name_or_path"] == str(tiny_gemma.resolve())
    # a bf16 run on a CPU (--precision bf16, or auto on a CPU with native bf16)
    c = write_llamafactory_yaml(
        path, cfg, resolve_model(str(tiny_gemma)), load_train_data(build_dir), gpu=False, bf16=True
    )
    assert c["use_cpu"] is True and c["bf16"] is True


def test_yaml_for_loose_samples_writes_its_dataset(tiny_llama, build_dir, tmp_path):
    loose = tmp_path / "mine.jsonl"
    loose.write_text((build_dir / "samples.train.jsonl").read_text())
    cfg = TrainConfig(
        model=str(tiny_llama),
        data=str(loose),
        output=str(tmp_path / "run"),
        records="dialogues",
        target_modules="q_proj,v_proj",
    )
    path = tmp_path / "cfg" / "lf.yaml"
    write_llamafactory_yaml(path, cfg, resolve_model(str(tiny_llama)), load_train_data(loose), gpu=True)
    c = yaml.safe_load(path.read_text())
    assert c["template"] == "default" and c["lora_target"] == "q_proj,v_proj" and c["bf16"] is True
    assert c["mask_history"] is False  # dialogue records learn every counselor turn
    ds = tmp_path / "cfg" / "lf_data"
    assert c["dataset_dir"] == str(ds)
    info = json.loads((ds / "dataset_info.json").read_text())
    records = json.loads((ds / info["mi_train"]["file_name"]).read_text())
    assert len(records) == 6  # one per dialogue
    assert records[0]["system"] == SYSTEM
