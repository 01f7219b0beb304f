"""A PEFT LoRA adapter -> llama.cpp LoRA GGUF, so llama.cpp applies it on the quantised base.

llama.cpp reads `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and
per adapted weight `<gguf name>.lora_a` (PEFT's lora_A, r x in) and `.lora_b` (lora_B,
out x r); it scales by alpha / r as PEFT does. Only families whose HF->GGUF conversion
leaves the attention/MLP weights as they are (Gemma, Qwen2) are supported here; for the
others, merge the adapter and export a GGUF (`mi-llm export`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from mi_llm.errors import MiLlmError
from mi_llm.layout import AdapterPaths

log = logging.getLogger(__name__)

# HF model_type -> GGUF architecture, for the architectures whose weights convert unchanged.
ARCHS = {"gemma3_text": "gemma3", "gemma3": "gemma3", "gemma2": "gemma2", "qwen2": "qwen2", "qwen3": "qwen3"}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.(?:[^.]+\.)?weight$")


def gguf_arch(gguf_path: Path) -> str:
    from mi_llm.llm.embedded import read_gguf

    reader = read_gguf(gguf_path)
    field = reader.fields.get("general.architecture")
    if field is None:
        raise MiLlmError(f"{gguf_path}: no general.architecture in the GGUF")
    return bytes(field.parts[field.data[0]]).decode()


def convert_lora(adapter: Path, out: Path, arch: str, n_layers: int) -> Path:
    """Write the adapter as a llama.cpp LoRA GGUF (F32) at `out`, atomically."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads(AdapterPaths(adapter).peft_config.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MiLlmError(f"{adapter}: only LoRA adapters can be applied by llama.cpp (got {cfg.get('peft_type')})")
    if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise MiLlmError(
            f"{adapter}: rsLoRA/DoRA/per-module ranks are not supported by the llama.cpp path; "
            "merge the adapter (mi-llm export) instead"
        )
    if cfg.get("modules_to_save"):
        raise MiLlmError(f"{adapter}: adapters with modules_to_save need merging (mi-llm export)")
    weights = AdapterPaths(adapter).weights
    if not weights.is_file():
        raise MiLlmError(f"{adapter}: no {weights.name}")
    names = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in names:
        raise MiLlmError(f"unknown GGUF architecture {arch!r}")
    tmap = gguf.get_tensor_name_map(names[arch], n_layers)
    tensors = load_file(str(weights))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise MiLlmError(f"{adapter}: unsupported adapter tensor {key} (only LoRA A/B weights can be applied)")
        module = m["module"].replace("model.language_model.", "model.")
        name = tmap.get_name(module)
        if name is None:
            raise MiLlmError(f"{adapter}: no llama.cpp tensor for module {module}")
        pairs.setdefault(name, {})[m["ab"]] = value.astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(cfg.get("lora_alpha", cfg.get("r", 8))))
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise MiLlmError(f"{adapter}: {name} lacks its lora_A or lora_B")
        writer.add_tensor(f"{name}.weight.lora_a", ab["A"])
        writer.add_tensor(f"{name}.weight.lora_b", ab["B"])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote llama.cpp LoRA %s (%d adapted weights)", out, len(pairs))
    return out
