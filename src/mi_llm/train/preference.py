"""Preference training of a LoRA adapter on chosen / rejected pairs (`mi-llm train --method
dpo|kto`), on the shared machinery of `mi_llm.train.trainer` (accelerate, checkpoints,
resume, progress, log, saving).

- **DPO** (Rafailov et al. 2023), the sigmoid loss: -log sigmoid(beta * ((log pi(y_w|x) -
  log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)))), averaged over the pairs of a step.
- **KTO** (Ethayarajh et al. 2024) in TRL's form: chosen replies are desirable, rejected
  ones undesirable; each scores 1 - sigmoid(beta * (log-ratio - z)) (desirable) or
  1 - sigmoid(beta * (z - log-ratio)) (undesirable), z the clamped (>= 0), detached estimate
  of KL(policy || reference) from mismatched replies: each pair's prompt followed by the
  chosen reply of the next pair in the file, averaged over the step (and the processes).

The reference model is the policy before its first step (the `--adapter` it starts from,
typically the SFT adapter; without one the base, as a fresh LoRA adds nothing). Its
log-probabilities are computed once, before training, and kept in `ref_logps.json` in the
output folder, so a resumed run uses the same ones and no second model is held in memory.

Speed: a sequence's log-probability is the negative of `SelectiveLMLoss`'s sum of token
losses, so the LM head runs only on the reply's positions; and the chosen and rejected
sequences of a pair share their whole prompt: it runs once (`mi_llm.train.prefix`), both
replies on top of it, and its backward once (single process, as for SFT; the plain path
otherwise). One pair per micro-batch; `grad_accum` pairs per optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.prefs.pairs import PreferencePair, read_pairs
from mi_llm.train.config import TrainConfig
from mi_llm.train.data import Example, SampleTooLong, TrainData, collate, encode_sample, micro_stream
from mi_llm.train.loss import SelectiveLMLoss, causal_lm_of
from mi_llm.train.prefix import SharedPrefix, common_prefix, max_prefix_len, prefix_supported
from mi_llm.train.trainer import LoraTrainer, TrainResult

log = logging.getLogger(__name__)


@dataclass
class PairExample:
    """A pair's two sequences (same prompt, history cut alike), the length of what they share
    before the first labelled token, and the reference log-probabilities."""

    pair_id: str
    chosen: Example
    rejected: Example
    prefix: int
    kl: Example | None = None  # KTO: this prompt + another pair's chosen reply
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0
    ref_kl: float = 0.0

    def sequences(self) -> list[Example]:
        return [self.chosen, self.rejected] + ([self.kl] if self.kl is not None else [])

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def encode_pair(
    pair: PreferencePair,
    tokenizer: Any,
    max_length: int,
    kl_reply: str | None = None,
    encode: Any = None,
    where: str = "",
) -> PairExample:
    """Both replies after the same context: history rounds dropped (oldest first) until the
    longer of the two fits `max_length`. Raises SampleTooLong as SFT does."""
    replies = [pair.chosen.text, pair.rejected.text] + ([kl_reply] if kl_reply is not None else [])
    first = [encode_sample(pair.sample(r), tokenizer, max_length, True, encode, where) for r in replies]
    drop = max(e.dropped_rounds for e in first)
    if any(e.dropped_rounds != drop for e in first):
        cut = pair.model_copy(update={"history": pair.history[drop:]})
        first = [encode_sample(cut.sample(r), tokenizer, max_length, True, encode, where) for r in replies]
        for e in first:
            e.dropped_rounds = drop
    chosen, rejected = first[0], first[1]
    return PairExample(
        pair.pair_id,
        chosen,
        rejected,
        common_prefix(first, min_len=1),
        kl=first[2] if kl_reply is not None else None,
    )


def sequence_logp_sums(module: Any, examples: list[Example], prefix: int, device: Any) -> tuple[list[Any], Any]:
    """The log-probability of each example's labelled tokens (a tensor in the graph when grad
    is on), and the SharedPrefix whose backward the caller runs after its own (or None).
    With `prefix`, the examples' first `prefix` tokens are the same and run once."""
    shared = None
    out = []
    if prefix:
        shared = SharedPrefix(module, torch.tensor([examples[0].input_ids[:prefix]], device=device))
    for e in examples:
        t = collate([e], 0)
        ids, labels = t["input_ids"], t["labels"]
        assert ids is not None and labels is not None
        ids, labels = ids.to(device), labels.to(device)
        if shared is not None:
            loss_sum, _ = module(ids[:, prefix:], labels[:, prefix:], None, shared.cache())
        else:
            loss_sum, _ = module(ids, labels, None)
        out.append(-loss_sum)
    return out, shared


def dpo_loss(
    beta: float, pc: torch.Tensor, pr: torch.Tensor, ref_c: float, ref_r: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The sigmoid DPO loss of one pair and its rewards."""
    chosen_reward = beta * (pc - ref_c)
    rejected_reward = beta * (pr - ref_r)
    loss = -F.logsigmoid(chosen_reward - rejected_reward)
    return loss, {"reward_chosen": float(chosen_reward.detach()), "reward_rejected": float(rejected_reward.detach())}


def kto_loss(
    beta: float,
    pc: torch.Tensor,
    pr: torch.Tensor,
    ref_c: float,
    ref_r: float,
    kl: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's KTO loss of a pair's desirable (chosen) and undesirable (rejected) reply, averaged
    over the two; `kl` the detached, clamped KL estimate."""
    chosen_ratio = pc - ref_c
    rejected_ratio = pr - ref_r
    chosen_loss = 1 - torch.sigmoid(beta * (chosen_ratio - kl))
    rejected_loss = 1 - torch.sigmoid(beta * (kl - rejected_ratio))
    loss = (desirable_weight * chosen_loss + undesirable_weight * rejected_loss) / 2
    return loss, {
        "reward_chosen": float(beta * chosen_ratio.detach()),
        "reward_rejected": float(beta * rejected_ratio.detach()),
    }


class PreferenceTrainer(LoraTrainer[list[PairExample]]):
    """LoRA DPO / KTO of `cfg.model` (from `cfg.adapter`) on the pairs file `cfg.data`."""

    loss_unit = "pairs"

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        show_progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if cfg.method not in ("dpo", "kto"):
            raise MiLlmError(f"PreferenceTrainer trains dpo or kto, not {cfg.method}")
        if cfg.batch_size != 1:
            raise MiLlmError(
                f"--method {cfg.method} trains one pair per micro-batch: use --batch-size 1 and --grad-accum for more"
            )
        super().__init__(cfg, resume, show_progress, on_step)
        self.share_prefix = False
        self.prefix_tokens_saved = 0
        self.reference_seconds = 0.0  # computing the reference log-probs (0 when read back)
        self._metrics: list[dict[str, float]] = []

    # ---- data

    def load_data(self) -> TrainData:
        path = Path(self.cfg.data)
        self.pairs = read_pairs(path)
        return TrainData(path, None, [])

    def encode(self, tokenizer: Any) -> int:
        cfg = self.cfg
        self.examples: list[PairExample] = []
        self.skipped: list[str] = []
        n = len(self.pairs)
        where = f"{self.data.samples_file}: "
        for i, pair in enumerate(self.pairs):
            # KTO's mismatched reply: the next pair's chosen one (another round's), fixed so the
            # reference needs computing once
            kl_reply = self.pairs[(i + 1) % n].chosen.text if cfg.method == "kto" and n > 1 else None
            try:
                self.examples.append(encode_pair(pair, tokenizer, cfg.max_length, kl_reply, where=where))
            except SampleTooLong:
                if cfg.on_overflow == "error":
                    raise
                self.skipped.append(pair.pair_id)
        if not self.examples:
            raise MiLlmError(f"{self.data.samples_file}: no pair fits --max-length {cfg.max_length}")
        if self.skipped:
            log.warning("skipped %d pairs longer than --max-length %d", len(self.skipped), cfg.max_length)
        self.lengths = [len(e) for e in self.examples]
        return len(self.examples)

    def data_summary(self) -> dict[str, Any]:
        ex = self.examples
        return {
            "pairs": len(self.pairs),
            "examples": len(ex),
            "skipped_too_long": len(self.skipped),
            "skipped_ids": self.skipped[:20],
            "tokens": sum(len(e) for e in ex),
            "target_tokens": sum(e.chosen.n_targets + e.rejected.n_targets for e in ex),
            "shared_prompt_tokens": sum(e.prefix for e in ex),
            "truncated": sum(1 for e in ex if e.chosen.dropped_rounds),
        }

    def describe_data(self) -> str:
        return f"{len(self.examples)} preference pairs ({sum(self.lengths)} tokens), {self.cfg.method}"

    # ---- model

    def wrap_model(self, peft_model: Any) -> torch.nn.Module:
        fused_head = self.acc.distributed_type.name not in ("FSDP", "DEEPSPEED")
        return SelectiveLMLoss(peft_model, self.cfg.logits_chunk, fused_head=fused_head)

    def resume(self) -> None:
        """The reference log-probs come from the weights before any step: computed here, before
        a checkpoint's weights are loaded, or read back from the run's first invocation."""
        self.share_prefix = (
            self.cfg.share_prefix
            and self.world == 1
            and not self.cfg.gradient_checkpointing
            and prefix_supported(causal_lm_of(self.peft_model))
        )
        max_prefix = max_prefix_len(causal_lm_of(self.peft_model).config)
        if max_prefix is not None:
            for e in self.examples:
                e.prefix = min(e.prefix, max_prefix)
        self._reference(self.checkpoint is not None)
        super().resume()

    def _reference_key(self) -> dict[str, Any]:
        h = hashlib.sha256(Path(self.cfg.data).read_bytes()).hexdigest()
        cfg = self.cfg
        return {
            "pairs_sha256": h,
            "model": cfg.model,
            "adapter": cfg.adapter,
            "max_length": cfg.max_length,
            "method": cfg.method,
        }

    def _reference(self, resuming: bool) -> None:
        path = self.paths.ref_logps
        key = self._reference_key()
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if saved is not None and saved.get("key") == key:
            logps = saved["logps"]
        elif resuming:
            raise MiLlmError(
                f"{path}: the reference log-probs of this run are missing or were made for other data; "
                "start the run again without --resume"
            )
        else:
            started = time.monotonic()
            logps = self._compute_reference()
            self.reference_seconds = time.monotonic() - started
            if self.main:
                self.out.mkdir(parents=True, exist_ok=True)
                write_json(path, {"key": key, "logps": logps})
        for e in self.examples:
            v = logps[e.pair_id]
            e.ref_chosen, e.ref_rejected = v[0], v[1]
            e.ref_kl = v[2] if len(v) > 2 else 0.0

    @torch.no_grad()
    def _compute_reference(self) -> dict[str, list[float]]:
        from mi_llm.train.progress import counting_progress

        module = self.model
        was_training = module.training
        module.eval()
        out: dict[str, list[float]] = {}
        with counting_progress(
            "reference log-probs", len(self.examples), enabled=self.main and self.show_progress
        ) as advance:
            for e in self.examples:
                with self.acc.autocast():
                    logps, _ = sequence_logp_sums(
                        module, e.sequences(), e.prefix if self.share_prefix else 0, self.acc.device
                    )
                out[e.pair_id] = [float(x) for x in logps]
                advance(1)
        module.train(was_training)
        return out

    # ---- the steps

    def windows(self, start_step: int) -> Iterator[list[PairExample]]:
        cfg = self.cfg
        stream = micro_stream(
            self.lengths, 1, cfg.seed, start_step * cfg.grad_accum, self.schedule, self.world, self.rank
        )
        buf: list[PairExample] = []
        for _, batch in stream:
            buf.append(self.examples[batch[0]])
            if len(buf) == cfg.grad_accum:
                yield buf
                buf = []
        if buf:
            yield buf

    def window_counts(self, window: list[PairExample]) -> tuple[int, int]:
        return len(window), sum(len(e) for e in window)

    def _kl_estimate(self, window: list[PairExample]) -> float:
        """KTO's z: mean (policy - reference) log-prob of the mismatched replies, over the step and
        the processes, clamped at 0, without gradient."""
        diffs = []
        with torch.no_grad(), self.acc.autocast():
            for e in window:
                assert e.kl is not None
                (lp,), _ = sequence_logp_sums(self.model, [e.kl], 0, self.acc.device)
                diffs.append(float(lp) - e.ref_kl)
        total = torch.tensor([sum(diffs), len(diffs)], dtype=torch.float64, device=self.acc.device)
        if self.world > 1:
            total = self.acc.reduce(total, reduction="sum")
        return max(0.0, float(total[0] / total[1]))

    def train_window(self, window: list[PairExample], n_targets: int) -> tuple[torch.Tensor, Any]:
        acc, cfg = self.acc, self.cfg
        # accelerate divides by grad_accum and DDP averages over processes: undo both, so the
        # gradient is that of the mean pair loss over the step's pairs (n_targets: all processes')
        scale = cfg.grad_accum * self.world / n_targets
        window_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        grad_norm = None
        kl = self._kl_estimate(window) if cfg.method == "kto" and window[0].kl is not None else 0.0
        self._metrics = []
        for e in window:
            with acc.accumulate(self.model):
                prefix = e.prefix if self.share_prefix else 0
                with acc.autocast():
                    (pc, pr), shared = sequence_logp_sums(self.model, [e.chosen, e.rejected], prefix, acc.device)
                if prefix:
                    self.prefix_tokens_saved += prefix
                if cfg.method == "dpo":
                    loss, metrics = dpo_loss(cfg.beta, pc, pr, e.ref_chosen, e.ref_rejected)
                else:
                    loss, metrics = kto_loss(cfg.beta, pc, pr, e.ref_chosen, e.ref_rejected, kl)
                    metrics["kl"] = kl
                acc.backward(loss * scale)
                if shared is not None:
                    shared.backward()
                window_loss += loss.detach().double()
                self._metrics.append(metrics)
                if acc.sync_gradients:
                    grad_norm = self.optimizer_step()
        return window_loss, grad_norm

    def write_log_record(self, record: dict[str, Any]) -> None:
        """The step's rewards (this process's pairs): beta * (policy - reference) log-probs."""
        m = self._metrics
        if m:
            rc = sum(x["reward_chosen"] for x in m) / len(m)
            rr = sum(x["reward_rejected"] for x in m) / len(m)
            record = {
                **record,
                "reward_chosen": round(rc, 6),
                "reward_rejected": round(rr, 6),
                "reward_margin": round(rc - rr, 6),
                "reward_accuracy": round(sum(x["reward_chosen"] > x["reward_rejected"] for x in m) / len(m), 4),
                **({"kl": round(m[0]["kl"], 6)} if "kl" in m[0] else {}),
            }
        super().write_log_record(record)

    def result_summary(self) -> dict[str, Any]:
        return {
            "method": self.cfg.method,
            "beta": self.cfg.beta,
            "shared_prefix": self.share_prefix,
            "prefix_tokens_saved": self.prefix_tokens_saved,
            "reference_seconds": round(self.reference_seconds, 3),
        }


def train_preferences(
    cfg: TrainConfig,
    resume: bool = False,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """DPO / KTO of a LoRA adapter into `cfg.output` on the pairs file `cfg.data`."""
    return PreferenceTrainer(cfg, resume, show_progress, on_step).run()
