"""Causal-LM loss with logits computed only where a label exists.

A 262k-token vocabulary makes the LM head the biggest cost of a small model on CPU: the
reply is ~10% of a sample's tokens, so projecting only those hidden states saves most of
the head's matmul and its softmax, forward and backward. The loss equals the model's own
(`model(input_ids, labels=...)`) up to float rounding.

The module wraps the (PEFT) model so that accelerate can prepare it: DDP, FSDP and
DeepSpeed then see one forward call that runs the trunk and the head through their
modules (ZeRO-3 and FSDP gather parameters in module hooks).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mi_llm.llm.templates import IGNORE_INDEX

LOGITS_BUDGET = 8 * 2**20  # logits elements per chunk (32 MiB in fp32; 32 positions of Gemma 3)


class _FrozenHeadLoss(torch.autograd.Function):
    """Sum of token losses through a frozen LM head, one chunk of positions at a time: each
    chunk's logits are made, turned into its loss and the loss's gradient w.r.t. the hidden
    states, and freed. Backward returns the kept gradient (hidden-size per position), so no
    logits outlive their chunk and nothing is recomputed."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, fn: Any, chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden)
        for i in range(0, hidden.shape[0], chunk):
            with torch.enable_grad():
                h = hidden[i : i + chunk].detach().requires_grad_(True)
                loss = fn(h, targets[i : i + chunk])
                (g,) = torch.autograd.grad(loss, h)
            total += loss.detach().float()
            grads[i : i + chunk] = g
        ctx.save_for_backward(grads)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grads,) = ctx.saved_tensors
        return grads * grad_out.to(grads.dtype), None, None, None


def cache_kwarg(decoder: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); take what this model accepts."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        c = getattr(out, name, None)
        if c is not None:
            return c
    raise RuntimeError("the decoder returned no cache")


def causal_lm_of(model: nn.Module) -> Any:
    """The *ForCausalLM module inside a PEFT wrapper (LoRA layers injected in place); Any, as
    transformers' PreTrainedModel methods (get_decoder, get_output_embeddings) are untyped."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SelectiveLMLoss(nn.Module):
    """forward(input_ids, labels, attention_mask) -> (sum of token losses, number of tokens)."""

    def __init__(self, model: nn.Module, logits_chunk: int = 0, fused_head: bool = True):
        """`fused_head`: the chunked frozen-head loss (least memory); off, plain autograd
        (used under FSDP and DeepSpeed, whose hooks expect the head in the graph)."""
        super().__init__()
        self.model = model  # registered, so its parameters are this module's
        lm = causal_lm_of(model)
        cfg = lm.config
        self.config = cfg  # DeepSpeed fills its hidden-size based 'auto' values from model.config
        self._no_split_modules = getattr(lm, "_no_split_modules", None)  # FSDP wraps these layers
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)  # Cohere multiplies
        self.logits_scaling = getattr(cfg, "logits_scaling", None)  # Granite divides
        vocab = lm.get_output_embeddings().weight.shape[0]
        self.chunk = logits_chunk or max(16, LOGITS_BUDGET // max(1, vocab))
        self.fused_head = fused_head

    def _head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = causal_lm_of(self.model).get_output_embeddings()
        logits = head(hidden).float()
        if self.logits_scaling:
            logits = logits / self.logits_scaling
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, targets, reduction="sum")

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With `past_key_values` (a shared prefix, see mi_llm.train.prefix), `input_ids` and
        `labels` are the part after the prefix."""
        lm = causal_lm_of(self.model)
        decoder = lm.get_decoder()
        kw = {cache_kwarg(decoder): past_key_values} if past_key_values is not None else {}
        out: Any = decoder(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=past_key_values is not None, **kw
        )
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        # Position t predicts token t+1: keep the hidden states whose next token is labelled.
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        h = hidden[:, :-1][keep]
        t = targets[keep]
        n = t.numel()
        if n == 0:  # keeps every parameter in the graph (DDP expects gradients)
            return hidden.sum() * 0.0, torch.zeros((), device=hidden.device)
        head = lm.get_output_embeddings()
        if self.fused_head and not any(p.requires_grad for p in head.parameters()):
            loss = _FrozenHeadLoss.apply(h, t, self._head_loss, self.chunk)
        elif n <= self.chunk:
            loss = self._head_loss(h, t)
        else:
            # Recompute each chunk's logits in backward instead of keeping them all.
            loss = sum(
                checkpoint(self._head_loss, h[i : i + self.chunk], t[i : i + self.chunk], use_reentrant=False)
                for i in range(0, n, self.chunk)
            )
        return loss, torch.tensor(float(n), device=hidden.device)
