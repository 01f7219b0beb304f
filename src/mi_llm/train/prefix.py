"""Shared-prefix windows: every sample starts with the same system prompt (~100-130 tokens
of Gemma's ~350 per sample on the demo data). Within one optimizer step the LoRA weights
do not change, so the prefix's keys and values are the same for all `grad_accum` samples:
compute them once, run each sample's remainder on top of them, and back-propagate through
the prefix once with the gradients summed over the window.

Exact in exact arithmetic (the test compares gradients with the plain path). One
difference: LoRA dropout on the prefix draws one mask per window instead of one per sample.

Used for single-process runs with batch size 1 on transformers' own model classes (their
DynamicCache); multi-process runs (DDP, FSDP, DeepSpeed) take the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mi_llm.llm.templates import IGNORE_INDEX, shared_prefix_len
from mi_llm.train.data import Example

MIN_PREFIX = 16  # below this, the bookkeeping costs more than it saves


def prefix_supported(lm: Any) -> bool:
    """transformers-native decoders take a DynamicCache; remote-code models may not."""
    return type(lm).__module__.startswith("transformers.models.")


def common_prefix(examples: Sequence[Example], min_len: int = MIN_PREFIX, max_len: int | None = None) -> int:
    """Length P of the token prefix shared by all examples, such that no labelled token is
    predicted from inside it (position t predicts token t+1); 0 when not worth it."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    p = min(len(e) for e in examples) - 1  # keep at least one token after the prefix
    for e in examples[1:]:
        p = min(p, shared_prefix_len(e.input_ids, first))
    for e in examples:
        f = next((i for i, lab in enumerate(e.labels) if lab != IGNORE_INDEX), len(e.labels))
        p = min(p, f - 1)  # the prediction of token f comes from position f-1: outside the prefix
    if max_len is not None:
        p = min(p, max_len)
    return p if p >= min_len else 0


@dataclass
class Group:
    members: list[int]  # indices into the window's micro-batches, in run order
    prefix: int  # tokens shared by all members (0: each member runs whole)


def plan_window(examples: Sequence[Example], max_len: int | None, min_len: int = MIN_PREFIX) -> list[Group]:
    """Group a window's samples by shared prefix (e.g. one system prompt per language),
    each group in order of first appearance."""
    groups: list[list[int]] = []
    for i, e in enumerate(examples):
        for g in groups:
            if shared_prefix_len(examples[g[0]].input_ids, e.input_ids) >= min_len:
                g.append(i)
                break
        else:
            groups.append([i])
    return [Group(g, common_prefix([examples[i] for i in g], min_len, max_len)) for g in groups]


def max_prefix_len(config: Any) -> int | None:
    """Sliding-window caches keep only window-1 tokens: the prefix must fit inside."""
    w = getattr(config, "sliding_window", None)
    return int(w) - 2 if w else None


class SharedPrefix:
    """The prefix's cache computed once (attached to the graph), and detached copies of its
    tensors that each sample's forward reads and accumulates gradients into."""

    def __init__(self, module: Any, prefix_ids: torch.Tensor):
        from mi_llm.train.loss import causal_lm_of, output_cache

        lm = causal_lm_of(module.model)
        self.config = lm.config
        cache = output_cache(lm.get_decoder()(input_ids=prefix_ids, use_cache=True))
        self.attached: list[torch.Tensor] = []
        for layer in cache.layers:
            self.attached += [layer.keys, layer.values]
        self.leaves = [t.detach().requires_grad_(True) for t in self.attached]

    def cache(self) -> Any:
        """A fresh cache per sample (the forward appends to it)."""
        from transformers import DynamicCache

        c = DynamicCache(config=self.config)
        for i in range(0, len(self.leaves), 2):
            c.update(self.leaves[i], self.leaves[i + 1], i // 2)
        return c

    def backward(self) -> None:
        """Back-propagate the window's summed prefix gradients into the LoRA weights."""
        pairs = [(a, leaf.grad) for a, leaf in zip(self.attached, self.leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([a for a, _ in pairs], [g for _, g in pairs])
        self.attached, self.leaves = [], []
