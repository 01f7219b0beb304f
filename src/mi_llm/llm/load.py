"""Loading a resolved model with transformers: the tokenizer with its chat template, pad
token and end-of-turn ids; the weights in the device's dtype, in eval mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_llm.llm.resolve import ResolvedModel, resolve_model
from mi_llm.llm.templates import end_of_turn_ids


def _resolve(model: str | Path | ResolvedModel | None) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(model)


def load_tokenizer(name_or_path: str | Path | ResolvedModel | None = None) -> Any:
    """The model's tokenizer with its chat template and a pad token set."""
    from transformers import AutoTokenizer

    rm = _resolve(name_or_path)
    tok = AutoTokenizer.from_pretrained(str(rm.path), trust_remote_code=rm.trust_remote_code)
    tok.chat_template = rm.chat_template
    if tok.pad_token is None:
        # Batches are padded with the attention mask off, so any token will do; eos is always there.
        tok.pad_token = tok.eos_token
    tok.mi_llm_stop_ids = end_of_turn_ids(tok, rm.stop_tokens)
    return tok


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn (eos and the family's end-of-turn marker)."""
    ids = getattr(tokenizer, "mi_llm_stop_ids", None)
    if ids is None:
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(ids)


def default_dtype(device: str) -> Any:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name_or_path: str | Path | ResolvedModel | None = None, dtype: Any = None, device: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer): fp32 on CPU, bf16 on a CUDA device that supports it; eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    rm = _resolve(name_or_path)
    device = device or default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    tok = load_tokenizer(rm)
    model = AutoModelForCausalLM.from_pretrained(str(rm.path), dtype=dtype, trust_remote_code=rm.trust_remote_code)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() as a decorator wrapper
    model.eval()
    stops = stop_token_ids(tok)
    if stops:
        model.generation_config.eos_token_id = stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.mi_llm_resolved = rm  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules
    return model, tok
