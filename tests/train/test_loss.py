"""Logits only at labelled positions give the model's own loss and gradients."""

from __future__ import annotations

import pytest
import torch

from mi_llm.train.data import collate, encode_sample
from mi_llm.train.loss import SelectiveLMLoss
from tests.train.test_data import sample


def lora(path, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    # init_lora_weights=False: B is random too, so LoRA changes the output
    return get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))


def batch(path, n):
    from mi_llm.llm.load import load_tokenizer

    tok = load_tokenizer(str(path))
    exs = [encode_sample(sample(k), tok, 1024, last_only=k != 2) for k in range(n)]
    return collate(exs, tok.pad_token_id)


@pytest.mark.parametrize("kind", ["tiny_gemma", "tiny_llama"])
@pytest.mark.parametrize("n", [1, 3])
def test_selective_loss_equals_full_logits_loss(kind, n, request):
    path = request.getfixturevalue(kind)
    model = lora(path)
    model.eval()  # no dropout: both passes must see the same network
    b = batch(path, n)
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    full.backward()
    g_full = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    s, count = SelectiveLMLoss(model)(b["input_ids"], b["labels"], b["attention_mask"])
    assert count.item() == (b["labels"][:, 1:] != -100).sum().item()
    (s / count).backward()
    torch.testing.assert_close(s / count, full, rtol=1e-5, atol=1e-6)
    for k, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, g_full[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_chunked_head_equals_single_pass(tiny_gemma, fused):
    """Chunks of 3 positions (fused frozen-head loss, or checkpointed chunks) = one pass."""
    model = lora(tiny_gemma)
    model.eval()
    b = batch(tiny_gemma, 3)
    one, _ = SelectiveLMLoss(model, fused_head=False)(b["input_ids"], b["labels"], b["attention_mask"])
    one.backward()
    g1 = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    chunked, _ = SelectiveLMLoss(model, logits_chunk=3, fused_head=fused)(
        b["input_ids"], b["labels"], b["attention_mask"]
    )
    chunked.backward()
    torch.testing.assert_close(chunked, one, rtol=1e-5, atol=1e-5)
    for k, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, g1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["tiny_gemma", "tiny_llama"])
def test_shared_prefix_window_equals_plain_window(kind, request):
    """One prefix pass per window, its gradient summed over the window's samples, gives the
    same losses and LoRA gradients as running every sample whole."""
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.train.prefix import SharedPrefix, common_prefix, max_prefix_len

    path = request.getfixturevalue(kind)
    model = lora(path)
    model.eval()
    tok = load_tokenizer(str(path))
    exs = [encode_sample(sample(k), tok, 1024, last_only=True) for k in range(4)]
    wrapper = SelectiveLMLoss(model)
    p = common_prefix(exs, min_len=1, max_len=max_prefix_len(model.get_base_model().config))
    assert p >= 5 and all(e.input_ids[:p] == exs[0].input_ids[:p] for e in exs)
    plain = []
    for e in exs:
        b = collate([e], 0)
        s, _ = wrapper(b["input_ids"], b["labels"])
        s.backward()
        plain.append(s.item())
    g_plain = {k: p_.grad.clone() for k, p_ in model.named_parameters() if p_.requires_grad}
    model.zero_grad()
    shared = SharedPrefix(wrapper, torch.tensor([exs[0].input_ids[:p]]))
    got = []
    for e in exs:
        b = collate([e], 0)
        s, _ = wrapper(b["input_ids"][:, p:], b["labels"][:, p:], None, shared.cache())
        s.backward()
        got.append(s.item())
    shared.backward()
    assert got == pytest.approx(plain, rel=1e-5)
    for k, p_ in model.named_parameters():
        if p_.requires_grad:
            torch.testing.assert_close(p_.grad, g_plain[k], rtol=1e-4, atol=1e-5)


def test_common_prefix_stops_before_the_first_target():
    from mi_llm.train.data import Example
    from mi_llm.train.prefix import common_prefix

    a = Example("a", [1, 2, 3, 4, 5, 6], [-100, -100, -100, 4, 5, 6])
    b = Example("b", [1, 2, 3, 4, 9, 9], [-100, -100, -100, -100, 9, 9])
    assert common_prefix([a, b], min_len=1) == 2  # token 3 of a is a target: predicted at position 2
    assert common_prefix([a, b], min_len=3) == 0
    assert common_prefix([a], min_len=1) == 0


def test_plan_window_groups_samples_by_system_prompt():
    from mi_llm.train.data import Example
    from mi_llm.train.prefix import plan_window

    zh, en = list(range(100, 120)), list(range(200, 220))

    def ex(prefix, tail):
        ids = [1, 2] + prefix + tail
        return Example("x", ids, [-100] * (len(ids) - len(tail)) + tail)

    w = [ex(zh, [5, 6]), ex(en, [7]), ex(zh, [8, 9, 10]), ex(en, [11, 12]), ex([3] * 20, [4])]
    plan = plan_window(w, max_len=None, min_len=16)
    assert [(g.members, g.prefix) for g in plan] == [
        ([0, 2], 21),
        ([1, 3], 21),
        ([4], 0),
    ]  # 22 shared, the last predicts a target
