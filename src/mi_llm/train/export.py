"""`mi-llm export`: merge a LoRA adapter into its base model, save safetensors + tokenizer
(with the chat template), and optionally GGUF files (F16, Q8_0, ...) for llama.cpp.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.layout import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, AdapterPaths

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0", "bf16", "f32")


@dataclass
class ExportResult:
    output: Path
    base: str
    adapter: Path
    gguf: dict[str, Path] = field(default_factory=dict)


def find_adapter(path: str | Path) -> Path:
    """The folder holding adapter_config.json: the path itself or its `adapter/` subfolder
    (a run's models/<key>/)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MiLlmError(f"{p}: no such adapter folder")
    for cand in (p, p / ADAPTER_DIR):
        if (cand / ADAPTER_CONFIG).is_file():
            if not any((cand / f).is_file() for f in (ADAPTER_WEIGHTS, "adapter_model.bin")):  # .bin: older PEFT
                raise MiLlmError(f"{cand}: {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
            return cand
    raise MiLlmError(f"{p}: not a LoRA adapter (no {ADAPTER_CONFIG}); pass the --output folder of `mi-llm train`")


def adapter_base_name(adapter: Path) -> str | None:
    try:
        cfg = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MiLlmError(f"{adapter / ADAPTER_CONFIG}: unreadable ({e})") from None
    name = cfg.get("base_model_name_or_path")
    return name if isinstance(name, str) and name else None


def _adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    f = AdapterPaths(adapter).weights
    if f.is_file():
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            return {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
    import torch

    sd = torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def check_adapter_matches(model: Any, adapter: Path, model_name: str) -> None:
    """Every LoRA matrix must sit on a module of the base with the matching sizes; else a
    clear error naming both (PEFT's own message is a long tensor-size dump)."""
    shapes = _adapter_shapes(adapter)
    problems: list[str] = []
    checked = 0
    for key, shape in shapes.items():
        for part, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not key.endswith(part):
                continue
            path = key[: -len(part)]
            path = path[len("base_model.model.") :] if path.startswith("base_model.model.") else path
            try:
                mod = model.get_submodule(path)
            except AttributeError:
                problems.append(f"{path}: not in the model")
                continue
            w = getattr(mod, "weight", None)
            if w is None or w.dim() != 2:
                continue
            want = w.shape[1] if axis == 1 else w.shape[0]  # in_features / out_features
            checked += 1
            if shape[axis] != want:
                problems.append(f"{path}: adapter {shape[axis]} vs model {want} features")
    if problems or not checked:
        base = adapter_base_name(adapter) or "unknown base"
        detail = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise MiLlmError(
            f"adapter {adapter} (trained on {base}) does not match model {model_name}: "
            + (detail if detail else "no LoRA layer of the adapter fits the model")
        )


def load_merged(model_name: str | None, adapter: str | Path, dtype: Any = None) -> tuple[Any, Any, Any, Path]:
    """(merged model, tokenizer, resolved base, adapter folder), on CPU."""
    import torch
    from peft import PeftModel

    from mi_llm.llm.load import load_model
    from mi_llm.llm.resolve import resolve_model

    ad = find_adapter(adapter)
    name = model_name or adapter_base_name(ad)
    if not name:
        raise MiLlmError(f"{ad}: the adapter does not name its base model; pass --model")
    rm = resolve_model(name)
    model, tok = load_model(rm, dtype=dtype or torch.float32, device="cpu")
    check_adapter_matches(model, ad, rm.name)
    _warn_other_base(ad, rm)
    try:
        peft_model = PeftModel.from_pretrained(model, str(ad))
    except (RuntimeError, ValueError, KeyError) as e:
        raise MiLlmError(f"adapter {ad} does not load onto model {rm.name}: {str(e).splitlines()[0]}") from None
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, tok, rm, ad


def _warn_other_base(adapter: Path, rm: Any) -> None:
    """Same shapes, other weights (e.g. base vs instruct) cannot be told from the tensors: the
    training record beside the adapter says which base it was."""
    cfg_file = AdapterPaths(adapter).train_config
    if not cfg_file.is_file():
        return
    try:
        trained = json.loads(cfg_file.read_text(encoding="utf-8")).get("model", {})
    except ValueError:
        return
    same = (trained.get("sha256") and trained.get("sha256") == rm.sha256) or trained.get("path") == str(rm.path)
    if not same:
        log.warning(
            "adapter %s was trained on %s (%s), merging into %s (%s)",
            adapter,
            trained.get("name"),
            trained.get("path"),
            rm.name,
            rm.path,
        )


def export(
    model_name: str | None,
    adapter: str | Path,
    out: str | Path,
    gguf_types: list[str] | None = None,
    dtype: str = "auto",
    llama_cpp: str | Path | None = None,
) -> ExportResult:
    find_adapter(adapter)  # fail fast, before the heavy imports
    import torch

    from mi_llm.llm.home import MODEL_INFO_FILE
    from mi_llm.train.gguf import convert_to_gguf

    out = Path(out).expanduser()
    types = [t.strip().lower() for t in (gguf_types or []) if t.strip()]
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad:
        raise MiLlmError(f"--gguf {','.join(bad)}: choose among {', '.join(GGUF_TYPES)}")
    if out.exists() and any(out.iterdir()):
        raise MiLlmError(f"{out}: exists and is not empty; choose another -o")
    merged, tok, rm, ad = load_merged(model_name, adapter)
    if dtype != "auto":
        if dtype not in ("float32", "bfloat16", "float16"):
            raise MiLlmError(f"--dtype {dtype}: choose auto, float32, bfloat16 or float16")
        merged = merged.to(getattr(torch, dtype))
    log.info("saving the merged model into %s", out)
    tmp = out.with_name(f".{out.name}.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))  # with the chat template
        _strip_quant_config(tmp / "config.json")
        info = {
            "name": out.name,
            "family": rm.family,
            "merged_from": {"base": rm.describe(), "adapter": str(ad.resolve())},
        }
        (tmp / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    del merged
    result = ExportResult(out, rm.name, ad)
    for t in types:
        dest = out / f"model-{t}.gguf"
        convert_to_gguf(out, dest, t, llama_cpp=llama_cpp, vocab_from=rm.gguf, chat_template=rm.chat_template)
        result.gguf[t] = dest
    if result.gguf:
        # The llama.cpp backend finds the GGUF through the folder's model info.
        best = result.gguf.get("q8_0") or next(iter(result.gguf.values()))
        info["gguf"] = str(best.resolve())
        info["gguf_files"] = {k: str(v.resolve()) for k, v in result.gguf.items()}
        (out / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return result


def _strip_quant_config(path: Path) -> None:
    """A `quantization_config` key (even null) breaks loaders such as LLaMA-Factory's."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if "quantization_config" in cfg:
        del cfg["quantization_config"]
        path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
