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

IGNORE_INDEX = -100
LOGITS_BUDGET = 32 * 2**20  # logits elements per chunk (128 MiB in fp32)


def cache_kwarg(decoder: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); take what this model accepts."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        c = getattr(out, name, None)
        if c is not None:
            return c
    raise RuntimeError("the decoder returned no cache")


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The *ForCausalLM module inside a PEFT wrapper (LoRA layers injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SelectiveLMLoss(nn.Module):
    """forward(input_ids, labels, attention_mask) -> (sum of token losses, number of tokens)."""

    def __init__(self, model: nn.Module, logits_chunk: int = 0):
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
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With `past_key_values` (a shared prefix, see mi_llm.train.prefix), `input_ids` and
        `labels` are the part after the prefix."""
        lm = causal_lm_of(self.model)
        decoder = lm.get_decoder()
        kw = {cache_kwarg(decoder): past_key_values} if past_key_values is not None else {}
        out: Any = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=past_key_values is not None,
                           **kw)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        # Position t predicts token t+1: keep the hidden states whose next token is labelled.
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        h = hidden[:, :-1][keep]
        t = targets[keep]
        n = t.numel()
        if n == 0:  # keeps every parameter in the graph (DDP expects gradients)
            return hidden.sum() * 0.0, torch.zeros((), device=hidden.device)
        if n <= self.chunk:
            loss = self._head_loss(h, t)
        else:
            # Recompute each chunk's logits in backward instead of keeping them all.
            loss = sum(
                checkpoint(self._head_loss, h[i : i + self.chunk], t[i : i + self.chunk], use_reentrant=False)
                for i in range(0, n, self.chunk)
            )
        return loss, torch.tensor(float(n), device=hidden.device)
