"""Merging: the merged model computes what base + adapter compute; mismatches are named."""

from __future__ import annotations

import json

import pytest
import torch

from mi_llm.errors import MiLlmError
from mi_llm.train.export import export, find_adapter
from tests.train.conftest import make_tiny_model


def save_random_adapter(base, out, seed=1):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    p = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    p.peft_config["default"].base_model_name_or_path = str(base)
    p.save_pretrained(str(out))
    return out


def test_merged_model_equals_base_plus_adapter(tiny_gemma, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ad = save_random_adapter(tiny_gemma, tmp_path / "ad")
    r = export(None, ad, tmp_path / "merged")  # base read from the adapter's config
    assert (r.output / "model.safetensors").is_file() and (r.output / "tokenizer.json").is_file()
    info = json.loads((r.output / "mi_llm_model.json").read_text())
    assert info["family"] == "gemma"
    ids = torch.tensor([[2, 10, 50, 99, 7, 3, 300, 41]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_gemma), dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, str(ad)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(r.output), dtype=torch.float32).eval()(ids).logits
    assert not torch.allclose(with_adapter, plain, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-5)
    # the merged folder resolves as a model with its chat template
    from mi_llm.llm.resolve import resolve_model

    rm = resolve_model(str(r.output))
    assert rm.family == "gemma" and "<start_of_turn>" in rm.chat_template


def test_adapter_of_another_base_is_refused(tiny_gemma, tmp_path):
    other = make_tiny_model(tmp_path / "wide", "gemma3", hidden=48)
    ad = save_random_adapter(other, tmp_path / "ad")
    with pytest.raises(MiLlmError) as e:
        export(str(tiny_gemma), ad, tmp_path / "m")
    msg = str(e.value)
    assert f"adapter {ad}" in msg and str(other) in msg and f"model {tiny_gemma}" in msg
    assert "48" in msg and "32" in msg
    assert not (tmp_path / "m").exists()


def test_missing_or_bad_adapter(tmp_path):
    with pytest.raises(MiLlmError, match="no such adapter folder"):
        find_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiLlmError, match="not a LoRA adapter"):
        find_adapter(tmp_path / "empty")


def test_unknown_gguf_type(tiny_gemma, tmp_path):
    ad = save_random_adapter(tiny_gemma, tmp_path / "ad")
    with pytest.raises(MiLlmError, match="choose among f16, q8_0"):
        export(None, ad, tmp_path / "m", gguf_types=["q4_k"])
