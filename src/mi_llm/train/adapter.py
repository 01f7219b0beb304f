"""The LoRA adapter: put on the base model, saved as a PEFT folder, and kept in accelerate's
checkpoints instead of the whole model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.layout import ADAPTER_WEIGHTS, AdapterPaths
from mi_llm.train.config import TrainConfig


def load_peft_model(cfg: TrainConfig, rm: Any, dtype: torch.dtype) -> Any:
    from peft import LoraConfig, get_peft_model

    from mi_llm.llm.load import load_model

    model, _ = load_model(rm, dtype=dtype, device="cpu")  # accelerate places it
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.adapter:
        return _continue_adapter(model, Path(cfg.adapter).expanduser(), rm)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; a float scale works
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets(),
        task_type="CAUSAL_LM",
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in the model
        raise MiLlmError(f"LoRA on {rm.name}: {e}") from None
    # LoRA weights train in fp32 even when the base is bf16 (autocast computes in bf16).
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    peft_model.train()
    return peft_model


def _continue_adapter(model: Any, folder: Path, rm: Any) -> Any:
    """The base with an existing adapter (its own LoRA settings), trainable: preference training
    starts from the SFT adapter and saves an adapter of the same shape on the same base."""
    from peft import PeftModel

    if not AdapterPaths(folder).peft_config.is_file():
        raise MiLlmError(f"--adapter {folder}: not a LoRA adapter folder (no {AdapterPaths(folder).peft_config.name})")
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise MiLlmError(f"--adapter {folder} does not fit {rm.name}: {str(e).splitlines()[0]}") from None
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    peft_model.train()
    return peft_model


def adapter_state(acc: Any, wrapper: Any) -> dict[str, torch.Tensor]:
    """Full (gathered under ZeRO-3/FSDP) state dict of the PEFT model inside the objective
    `wrapper` (its attribute `model`), keys as PeftModel's."""
    sd = acc.get_state_dict(wrapper)
    return {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}


def save_adapter(acc: Any, wrapper: Any, out: Path, base_name: str) -> None:
    sd = adapter_state(acc, wrapper)
    if acc.is_main_process:
        peft_model = acc.unwrap_model(wrapper).model
        peft_model.save_pretrained(str(out), state_dict=sd, safe_serialization=True)
        # Name the base as the user did (e.g. `gemma-3-270m`, not its cache folder), so
        # `mi-llm export --adapter` finds it wherever the cache is.
        cfg_file = AdapterPaths(out).peft_config
        conf = json.loads(cfg_file.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = base_name
        write_json(cfg_file, conf)


def register_adapter_hooks(acc: Any) -> None:
    """accelerate's save_state would write the whole model; keep only the adapter."""

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if weights:  # DDP / single device: replace the full weights by the adapter
            weights.pop()
            if acc.is_main_process:
                acc.unwrap_model(models[0]).model.save_pretrained(os.path.join(output_dir, "adapter"))

    def load_hook(models: list[Any], input_dir: str) -> None:
        if models:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            m = models.pop()
            sd = load_file(os.path.join(input_dir, "adapter", ADAPTER_WEIGHTS))
            res = set_peft_model_state_dict(acc.unwrap_model(m).model, sd)
            bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
            if bad:
                raise MiLlmError(f"{input_dir}: checkpoint adapter does not fit the model ({bad[:3]})")

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)
