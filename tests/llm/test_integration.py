"""The real embedded gemma-3-270m: conversion (cached), generation with hf and llama.cpp."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mi_llm.llm.backends import get_backend, preset
from tests.conftest import needs_setup

pytestmark = pytest.mark.integration

CONV = [{"role": "system", "content": "You are a counselor."}, {"role": "user", "content": "I want to stop smoking."}]
needs_llamacpp = needs_setup(
    importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python (make venv builds it)"
)


@pytest.fixture(scope="module")
def embedded():
    from mi_llm.llm.resolve import resolve_model

    return resolve_model("gemma-3-270m")  # converts once (about a minute), then cached


def test_embedded_resolves_to_a_clean_cached_folder(embedded, monkeypatch) -> None:
    from types import SimpleNamespace

    from mi_llm.llm import embedded as embedded_module
    from mi_llm.llm import home
    from mi_llm.llm.resolve import resolve_model

    assert embedded.family == "gemma" and embedded.source == "embedded"
    assert embedded.path.name == f"gemma-3-270m-{embedded.sha256[:12]}"
    cfg = json.loads((embedded.path / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert list(embedded.path.glob("*.safetensors"))
    assert embedded.gguf is not None and embedded.gguf.is_file()

    # second resolution: no conversion, no re-hashing (either would raise here; a time limit
    # would pass on a fast machine that did both and fail on a slow one that did neither)
    def forbidden(*args, **kwargs):
        raise AssertionError("the cached model was converted or hashed again")

    monkeypatch.setattr(embedded_module, "convert_gguf", forbidden)
    monkeypatch.setattr(home, "hashlib", SimpleNamespace(sha256=forbidden))
    again = resolve_model("gemma-3-270m")
    assert again.path == embedded.path and again.sha256 == embedded.sha256


def test_tokenizer_turn_markers(embedded) -> None:
    from mi_llm.llm.load import load_tokenizer, stop_token_ids

    tok = load_tokenizer(embedded)
    assert tok.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    assert 106 in stop_token_ids(tok)
    ids = tok(tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]
    assert ids[:2] == [2, 105] and ids[-3:-1] == [105, 4368]  # <bos><start_of_turn> ... <start_of_turn>model


def test_hf_greedy_generates(embedded) -> None:
    with get_backend("hf", embedded, batch_size=2) as be:
        out = be.generate([CONV, CONV[:1] + [{"role": "user", "content": "Hi"}]], preset("greedy", max_new_tokens=6))
    assert all(0 < c.completion_tokens <= 6 for c in out)
    assert all(c.text for c in out)


@needs_llamacpp
def test_llamacpp_single_and_parallel_agree(embedded) -> None:
    cfg = preset("greedy", max_new_tokens=8)
    convs = [
        CONV,
        CONV + [{"role": "assistant", "content": "Tell me more."}, {"role": "user", "content": "It is hard."}],
    ]
    with get_backend("llamacpp", embedded, n_ctx=512) as single:
        a = single.generate(convs, cfg)
    par = get_backend("llamacpp", embedded, n_ctx=512, parallel=2)
    b = par.generate(convs, cfg)
    b2 = par.generate(convs, cfg)  # second pass reuses cached prefixes
    assert all(c.text and 0 < c.completion_tokens <= 8 for c in a + b + b2)
    # Greedy on the same GGUF; batch shapes change llama.cpp's float rounding, so later
    # tokens may flip at near-ties (single-stream llama.cpp itself differs with and
    # without a cached prefix), but the first token comes from clear-cut logits.
    first = [par.llm.tokenize(c.text.encode(), add_bos=False)[0] for c in a]
    assert first == [par.llm.tokenize(c.text.encode(), add_bos=False)[0] for c in b]
    assert first == [par.llm.tokenize(c.text.encode(), add_bos=False)[0] for c in b2]
    par.close()


def _llama_last_logits(backend, prompt: list[int]):
    import llama_cpp
    import numpy as np

    backend.llm.reset()
    backend.llm.eval(prompt)
    ptr = llama_cpp.llama_get_logits_ith(backend.llm._ctx.ctx, -1)  # noqa: SLF001
    return np.ctypeslib.as_array(ptr, shape=(backend.llm.n_vocab(),)).copy()


@needs_llamacpp
def test_llamacpp_applies_a_peft_lora_like_transformers(embedded, tmp_path: Path, monkeypatch) -> None:
    """The PEFT adapter converted to a llama.cpp LoRA GGUF moves the logits as PEFT does; the
    architecture and depth come from the model's HF config, not from parsing the GGUF (slow)."""
    from mi_llm.llm import lora_gguf
    from mi_llm.llm.backends.llamacpp import LlamaCppBackend

    def slow_path(*_a, **_k):
        raise AssertionError("the GGUF was parsed for what the model's config says")

    monkeypatch.setattr(lora_gguf, "gguf_arch", slow_path)
    monkeypatch.setattr(LlamaCppBackend, "_gguf_block_count", slow_path)
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.templates import encode_prompt

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(embedded.path))
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # lora_B starts at zero: give the adapter a visible effect
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(str(tmp_path / "lora"))
    prompt = encode_prompt(load_tokenizer(embedded), CONV)
    peft.eval()
    with torch.no_grad():
        hf_lora = peft(torch.tensor([prompt])).logits[0, -1].numpy()
        with peft.disable_adapter():
            hf_base = peft(torch.tensor([prompt])).logits[0, -1].numpy()
    del peft, base
    with get_backend("llamacpp", embedded, n_ctx=512) as plain:
        ll_base = _llama_last_logits(plain, prompt)
    with get_backend("llamacpp", embedded, adapter=str(tmp_path / "lora"), n_ctx=512) as adapted:
        assert adapted.lora_gguf is not None and adapted.lora_gguf.is_file()
        ll_lora = _llama_last_logits(adapted, prompt)
    with get_backend("llamacpp", embedded, adapter=str(tmp_path / "lora"), n_ctx=512, parallel=2) as batched:
        [(first, _)] = batched._engine.generate([prompt], preset("greedy", max_new_tokens=1))  # noqa: SLF001
    assert first == [int(ll_lora.argmax())] or int(ll_lora.argmax()) in batched.stop_ids
    hf_delta, ll_delta = hf_lora - hf_base, ll_lora - ll_base
    assert np.abs(hf_delta).max() > 0.5  # the adapter matters ...
    assert np.corrcoef(hf_delta, ll_delta)[0, 1] > 0.9  # ... and llama.cpp applies it as PEFT does
