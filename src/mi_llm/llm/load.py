"""Loading a resolved model with transformers: the tokenizer with its chat template, pad
token and end-of-turn ids; the weights in the device's dtype, in eval mode."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from mi_llm.llm.resolve import ResolvedModel, resolve_model
from mi_llm.llm.templates import end_of_turn_ids


def _resolve(model: str | Path | ResolvedModel | None) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(model)


# Files whose change makes a cached tokenizer stale (those a folder has are part of the key).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
_TOKENIZERS_KEPT = 4
_tokenizers: OrderedDict[tuple, Any] = OrderedDict()
_tokenizers_lock = threading.Lock()


def _tokenizer_key(rm: ResolvedModel) -> tuple:
    files = []
    for name in _TOKENIZER_FILES:
        f = rm.path / name
        if f.is_file():
            st = f.stat()
            files.append((name, st.st_size, st.st_mtime_ns))
    return (str(rm.path), rm.chat_template, tuple(rm.stop_tokens), rm.trust_remote_code, tuple(files))


def load_tokenizer(name_or_path: str | Path | ResolvedModel | None = None) -> Any:
    """The model's tokenizer with its chat template and a pad token set.

    One load per process for the same tokenizer files (the most recent few kept): loading
    the embedded model's 262k-token tokenizer takes 2.5-5 s here, and one `mi-llm demo`
    loaded it about a dozen times (build, each backend, the coders' embedders). Each caller
    gets its own copy of the Python object (a chat template or special token set on one does
    not reach the others); the Rust tokenizer and the vocabulary are shared, read-only."""
    rm = _resolve(name_or_path)
    key = _tokenizer_key(rm)
    with _tokenizers_lock:
        tok = _tokenizers.get(key)
        if tok is not None:
            _tokenizers.move_to_end(key)
    if tok is None:
        tok = _load_tokenizer(rm)
        with _tokenizers_lock:
            _tokenizers[key] = tok
            while len(_tokenizers) > _TOKENIZERS_KEPT:
                _tokenizers.popitem(last=False)
    return _own_copy(tok)


_SHARED_TABLES = ("_vocab", "_merges")  # large, and never written after loading


def _own_copy(tok: Any) -> Any:
    out = copy.copy(tok)
    for name, value in vars(tok).items():
        if isinstance(value, (dict, list, set)) and name not in _SHARED_TABLES:
            out.__dict__[name] = copy.copy(value)
    return out


def _load_tokenizer(rm: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

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
