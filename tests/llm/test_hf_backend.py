"""The transformers backend on a tiny random model: batching, stopping, sampling, adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends import get_backend, preset

CONVS = [
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello " * k}] for k in (1, 7, 3, 12, 2)
]


def test_batched_equals_unbatched_greedy(hf_backend) -> None:
    cfg = preset("greedy", max_new_tokens=10)
    hf_backend.batch_size = 4
    batched = hf_backend.generate(CONVS, cfg)
    hf_backend.batch_size = 1
    single = hf_backend.generate(CONVS, cfg)
    hf_backend.batch_size = 4
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in single]
    assert all(c.prompt_tokens > 0 for c in batched)


def test_greedy_matches_transformers_generate(hf_backend) -> None:
    import torch

    from mi_llm.llm.templates import encode_prompt

    ids = encode_prompt(hf_backend.tokenizer, CONVS[1])
    ours = hf_backend.generate_ids([ids], preset("greedy", max_new_tokens=8))[0][0]
    ref = hf_backend.model.generate(
        torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=hf_backend.stop_ids
    )[0, len(ids) :].tolist()
    cut = next((k for k, t in enumerate(ref) if t in hf_backend.stop_ids), len(ref))
    assert ours == ref[:cut]


def test_stops_at_end_of_turn(hf_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    eot = hf_backend.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    real = hf_backend.model.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):  # force <end_of_turn> at the third step
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.logits[:, -1, :] = -1e9
            out.logits[:, -1, eot] = 0.0
        return out

    # the backend calls the module (__call__), which runs forward
    monkeypatch.setattr(type(hf_backend.model), "__call__", lambda self, *a, **k: forward(*a, **k))
    [c] = hf_backend.generate([CONVS[0]], preset("greedy", max_new_tokens=10))
    assert c.completion_tokens == 2 and c.finish_reason == "stop"


def test_length_limit(hf_backend) -> None:
    [c] = hf_backend.generate([CONVS[0]], preset("greedy", max_new_tokens=3))
    assert c.completion_tokens <= 3
    if c.completion_tokens == 3:
        assert c.finish_reason == "length"


def test_sampling_is_seeded(hf_backend) -> None:
    cfg = preset("llamafactory", max_new_tokens=8, seed=7)
    a = hf_backend.generate(CONVS[:2], cfg)
    b = hf_backend.generate(CONVS[:2], cfg)
    assert [c.text for c in a] == [c.text for c in b]


def _make_adapter(model_dir: Path, out: Path, seed: int = 1) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # lora_B starts at zero; make the adapter change something
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(str(out))
    return out


def test_adapter_changes_outputs_and_merge_is_exact(tiny_model: Path, tmp_path: Path, hf_backend) -> None:
    adapter = _make_adapter(tiny_model, tmp_path / "lora")
    cfg = preset("greedy", max_new_tokens=8)
    merged = get_backend("hf", str(tiny_model), adapter=str(adapter), batch_size=4)
    unmerged = get_backend("hf", str(tiny_model), adapter=str(adapter), batch_size=4, merge_adapter=False)
    base = [c.text for c in hf_backend.generate(CONVS, cfg)]
    a = [c.text for c in merged.generate(CONVS, cfg)]
    b = [c.text for c in unmerged.generate(CONVS, cfg)]
    assert a == b
    assert a != base
    assert merged.describe()["adapter"] == str(adapter)


def test_adapter_for_another_base_is_rejected(tiny_model: Path, tmp_path: Path) -> None:
    from mi_llm.llm.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", hidden=48)
    adapter = _make_adapter(other, tmp_path / "lora-other")
    with pytest.raises(MiLlmError, match="different base model|does not fit"):
        get_backend("hf", str(tiny_model), adapter=str(adapter))


def test_adapter_folder_must_exist(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(MiLlmError, match="not a LoRA adapter folder"):
        get_backend("hf", str(tiny_model), adapter=str(tmp_path))


def test_prompt_too_long_is_a_clear_error(hf_backend) -> None:
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(MiLlmError, match="exceeds the model's context"):
        hf_backend.generate([long], preset("greedy", max_new_tokens=4))


def test_unknown_backend_and_preset() -> None:
    with pytest.raises(MiLlmError, match="unknown backend"):
        get_backend("nope", "x")
    with pytest.raises(MiLlmError, match="unknown generation preset"):
        preset("nope")


def test_describe_is_json(hf_backend) -> None:
    json.dumps(hf_backend.describe())


def test_vllm_missing_is_a_clear_error(tiny_model: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(MiLlmError, match="needs vLLM"):
        get_backend("vllm", str(tiny_model))
