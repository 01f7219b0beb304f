"""LoRA supervised fine-tuning: `SftTrainer`, the SFT objective on the shared training
machinery of `mi_llm.train.trainer` (accelerate, checkpoints, resume, progress, saving).

Per optimizer step: `grad_accum` micro-batches; the loss is the sum of token losses over
the whole window divided by the window's target tokens (over all processes), as
transformers' Trainer does, so accumulation equals one big batch. Logits are computed only
where labels exist (`mi_llm.train.loss`). Samples of one window that open with the same
tokens share one forward of that prefix (`mi_llm.train.prefix`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mi_llm.train.config import TrainConfig
from mi_llm.train.data import EncodeStats, Example, collate, encode_samples, micro_stream, select_records
from mi_llm.train.loss import SelectiveLMLoss, causal_lm_of
from mi_llm.train.prefix import Group, SharedPrefix, max_prefix_len, plan_window, prefix_supported
from mi_llm.train.trainer import LoraTrainer, TrainResult

log = logging.getLogger(__name__)

Batch = list[Example]  # one micro-batch


def _windows(stream: Iterator[tuple[int, list[int]]], size: int) -> Iterator[list[list[int]]]:
    """The micro-batches (example indices) grouped `size` at a time: one group per optimizer step."""
    buf: list[list[int]] = []
    for _, batch in stream:
        buf.append(batch)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


class SftTrainer(LoraTrainer[list[Batch]]):
    """LoRA SFT of `cfg.model` on the samples of `cfg.data` (selective-logits LM loss)."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        export_llamafactory: Path | None = None,
        show_progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(cfg, resume, show_progress, on_step)
        self.export_llamafactory = export_llamafactory
        self.share_prefix = False
        self.prefix_tokens_saved = 0  # forward/backward work saved by shared prefixes

    # ---- data

    def prepare_data(self) -> None:
        super().prepare_data()
        if self.export_llamafactory and self.main:
            from mi_llm.train.llamafactory import write_llamafactory_yaml

            write_llamafactory_yaml(
                self.export_llamafactory,
                self.cfg,
                self.rm,
                self.data,
                gpu=torch.cuda.is_available(),
                bf16=self.acc.mixed_precision == "bf16",
            )
            log.info("wrote LLaMA-Factory config %s", self.export_llamafactory)

    def encode(self, tokenizer: Any) -> int:
        from mi_llm.train.progress import counting_progress

        cfg = self.cfg
        records = select_records(self.data.samples, cfg.records)
        with counting_progress("encoding samples", len(records), enabled=self.main and self.show_progress) as advance:
            self.examples, self.stats = encode_samples(
                records,
                tokenizer,
                cfg.max_length,
                cfg.records,
                cfg.on_overflow,
                samples_file=self.data.samples_file,
                progress=advance,
            )
        _log_overflow(self.stats, cfg.max_length)
        self.lengths = [len(e) for e in self.examples]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return len(self.examples)

    def data_summary(self) -> dict[str, Any]:
        return self.stats.as_dict()

    def describe_data(self) -> str:
        s = self.stats
        return f"{s.examples} examples ({s.tokens} tokens, {s.target_tokens} target tokens)"

    # ---- model

    def wrap_model(self, peft_model: Any) -> torch.nn.Module:
        fused_head = self.acc.distributed_type.name not in ("FSDP", "DEEPSPEED")
        return SelectiveLMLoss(peft_model, self.cfg.logits_chunk, fused_head=fused_head)

    # ---- the steps

    def windows(self, start_step: int) -> Iterator[list[Batch]]:
        cfg = self.cfg
        lm = causal_lm_of(self.peft_model)
        self.share_prefix = (
            cfg.share_prefix
            and self.world == 1
            and cfg.batch_size == 1
            and not cfg.gradient_checkpointing
            and prefix_supported(lm)
            # a compiled layer fed the prefix's cache would compile once per layer (its index
            # is guarded), so compiled runs compute each sample whole: faster still (compiled.py)
            and not self.compiled_layers
        )
        self.max_prefix = max_prefix_len(lm.config)
        stream = micro_stream(
            self.lengths, cfg.batch_size, cfg.seed, start_step * cfg.grad_accum, self.schedule, self.world, self.rank
        )
        return ([[self.examples[i] for i in b] for b in window] for window in _windows(stream, cfg.grad_accum))

    def window_counts(self, window: list[Batch]) -> tuple[int, int]:
        return sum(e.n_targets for b in window for e in b), sum(len(e) for b in window for e in b)

    def train_window(self, window: list[Batch], n_targets: int) -> tuple[torch.Tensor, Any]:
        acc = self.acc
        # accelerate divides by grad_accum and DDP averages over processes: undo both
        # so the gradient is d(sum of token losses)/d(theta) / (window's target tokens).
        scale = self.cfg.grad_accum * self.world / n_targets
        window_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        grad_norm = None
        if self.share_prefix:
            plan = plan_window([b[0] for b in window], self.max_prefix)
        else:
            plan = [Group(list(range(len(window))), 0)]
        for group in plan:
            shared = self._shared_prefix(window[group.members[0]][0], group) if group.prefix else None
            for i in group.members:
                inputs = {
                    k: (v.to(acc.device) if v is not None else None) for k, v in collate(window[i], self.pad_id).items()
                }
                with acc.accumulate(self.model):
                    loss_sum = self._loss_sum(inputs, group.prefix, shared)
                    acc.backward(loss_sum * scale)
                    window_loss += loss_sum.detach().double()
                    if shared is not None and i == group.members[-1]:  # the group's prefix, once, before any step
                        shared.backward()
                        shared = None
                    if acc.sync_gradients:
                        grad_norm = self.optimizer_step()
        return window_loss, grad_norm

    def _shared_prefix(self, first: Example, group: Group) -> SharedPrefix:
        """One forward of the prefix the group's samples share (its backward after the last of them)."""
        with self.acc.autocast():
            shared = SharedPrefix(self.model, torch.tensor([first.input_ids[: group.prefix]], device=self.acc.device))
        self.prefix_tokens_saved += group.prefix * (len(group.members) - 1)
        return shared

    def _loss_sum(self, inputs: dict[str, Any], prefix: int, shared: SharedPrefix | None) -> torch.Tensor:
        """The micro-batch's sum of token losses; after a shared prefix, only its remaining tokens."""
        if prefix:
            assert shared is not None
            loss_sum, _ = self.model(
                inputs["input_ids"][:, prefix:], inputs["labels"][:, prefix:], None, shared.cache()
            )
        else:
            loss_sum, _ = self.model(inputs["input_ids"], inputs["labels"], inputs["attention_mask"])
        return loss_sum

    def result_summary(self) -> dict[str, Any]:
        return {"shared_prefix": self.share_prefix, "prefix_tokens_saved": self.prefix_tokens_saved}


def _log_overflow(stats: EncodeStats, max_length: int) -> None:
    if stats.skipped_too_long:
        log.warning(
            "skipped %d samples longer than --max-length %d even without history", stats.skipped_too_long, max_length
        )
    if stats.truncated:
        log.info(
            "%d samples lost %d history rounds (oldest first) to fit --max-length %d",
            stats.truncated,
            stats.dropped_rounds,
            max_length,
        )


def train(
    cfg: TrainConfig,
    resume: bool = False,
    export_llamafactory: Path | None = None,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter into `cfg.output`; `on_step(step)` is called after each optimizer
    step (tests use it to interrupt a run at a known step)."""
    return SftTrainer(cfg, resume, export_llamafactory, show_progress, on_step).run()
