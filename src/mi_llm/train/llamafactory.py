"""The LLaMA-Factory YAML equivalent to a `mi-llm train` run (`--export-llamafactory FILE`).

Run it with `llamafactory-cli train FILE` in an environment where LLaMA-Factory is
installed. Differences that remain: LLaMA-Factory's `cutoff_len` shortens the prompt and
the reply in proportion where we drop history rounds, oldest first; it computes logits at
every position (same loss, slower).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer
from mi_llm.layout import TRAIN_SAMPLES, BuildPaths, llamafactory_dataset
from mi_llm.train.config import TrainConfig

# mi_llm.llm.templates family -> LLaMA-Factory template. `gemma3` wants a multimodal
# processor and fails on text-only checkpoints; `gemma` is the same text format.
TEMPLATES = {
    "gemma": "gemma",
    "llama3": "llama3",
    "chatml": "qwen",
    "baichuan2": "baichuan2",
    "glm4": "glm4",
    "default": "default",
}


def _dataset(cfg: TrainConfig, data: Any, yaml_path: Path) -> tuple[str, str, bool]:
    """(dataset name, dataset_dir, mask_history): the build's own export when it matches
    what we train on, else an export of exactly our samples written beside the YAML."""
    from mi_llm.build.exports import write_llamafactory
    from mi_llm.train.data import select_records

    mode = cfg.records
    dataset = llamafactory_dataset("train")
    build = getattr(data, "build_dir", None)
    if build is not None:
        folder = BuildPaths(build)
        info_file, meta_file = folder.dataset_info, folder.export_meta
        if info_file.is_file() and meta_file.is_file():
            info = json.loads(info_file.read_text(encoding="utf-8"))
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            same_file = Path(data.samples_file).name == TRAIN_SAMPLES
            if dataset in info and meta.get("mode") == mode and same_file:
                return dataset, str(folder.llamafactory.resolve()), mode == "rounds"
    out = yaml_path.resolve().parent / f"{yaml_path.stem}_data"
    records = select_records(data.samples, mode)
    pairs = [(s.system, [*s.history, (s.query, s.target)]) for s in records]
    write_llamafactory(out, {"train": pairs}, mode)
    return dataset, str(out), mode == "rounds"


def llamafactory_config(
    cfg: TrainConfig,
    rm: Any,
    data: Any,
    yaml_path: Path,
    gpu: bool = True,
    output_dir: str | None = None,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """`bf16`: the run's precision (default: bf16 on a GPU, fp32 on a CPU); on a CPU, LLaMA-Factory's
    `bf16: true` is CPU autocast with fp32 LoRA weights, as ours."""
    template = TEMPLATES.get(rm.family)
    if template is None:
        raise MiLlmError(f"no LLaMA-Factory template known for model family {rm.family!r}")
    dataset, dataset_dir, mask_history = _dataset(cfg, data, yaml_path)
    targets = cfg.lora_targets()
    alpha = int(cfg.lora_alpha) if float(cfg.lora_alpha).is_integer() else cfg.lora_alpha
    c: dict[str, Any] = {
        "model_name_or_path": str(rm.path),
        "trust_remote_code": bool(rm.trust_remote_code),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": cfg.lora_r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.lora_dropout,
        "lora_target": "all" if targets == "all-linear" else ",".join(targets),
        "dataset": dataset,
        "dataset_dir": dataset_dir,
        "template": template,
        "cutoff_len": cfg.max_length,
        "mask_history": mask_history,
        "overwrite_cache": True,
        "output_dir": output_dir or f"{cfg.output.rstrip('/')}_llamafactory",
        "overwrite_output_dir": True,
        "logging_steps": cfg.log_steps,
        "save_steps": cfg.save_steps,
        "report_to": "none",
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.lr,
        "num_train_epochs": cfg.epochs,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_ratio": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
    }
    if cfg.max_steps:
        c["max_steps"] = cfg.max_steps
    bf16 = gpu if bf16 is None else bf16
    c["bf16"] = bf16
    if not gpu:
        c["use_cpu"] = True
    return c


def write_llamafactory_yaml(
    path: Path,
    cfg: TrainConfig,
    rm: Any,
    data: Any,
    gpu: bool = True,
    output_dir: str | None = None,
    extra: dict[str, Any] | None = None,
    bf16: bool | None = None,
) -> dict[str, Any]:
    path = Path(path)
    c = llamafactory_config(cfg, rm, data, path, gpu=gpu, output_dir=output_dir, bf16=bf16)
    c.update(extra or {})
    header = (
        f"# LLaMA-Factory equivalent of `mi-llm train --model {cfg.model} --data {cfg.data}`\n"
        "# Run: llamafactory-cli train " + path.name + "\n"
        "# mask_history: true trains on the target reply r_t only (round records, as the paper);\n"
        "# cutoff_len truncates differently from mi-llm (which drops the oldest history rounds).\n"
    )
    with atomic_writer(path) as f:
        f.write(header)
        yaml.safe_dump(c, f, sort_keys=False, allow_unicode=True)
    return c
