"""What the trained experts (`tuned.py`, `encoder.py`) share: how a network with a
classification head is trained on weighted, imbalanced, multi-source codes on a CPU.

- Sources with a weight below 1 (automatic labels) are sampled with that probability in each
  epoch instead of down-weighted: the same expected gradient for a fraction of the compute,
  and a different sample each epoch. Weights above 1 scale the loss.
- Classes are weighted by (inverse frequency) ** power; 0.5 (sqrt) scored best on AnnoMI.
- Batches hold utterances of similar length (less padding), in shuffled order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


def epoch_samples(weights: Sequence[float] | np.ndarray, epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The rows each epoch trains on: a row of weight w < 1 with probability w."""
    keep_p = np.clip(np.asarray(weights, dtype=float), 0.0, 1.0)
    return [np.flatnonzero(rng.random(len(keep_p)) < keep_p) for _ in range(epochs)]


def length_batches(
    rows: Sequence[int] | np.ndarray, length: Callable[[int], int], batch_size: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Batches of similar length; rows and batches shuffled when `rng` is given."""
    rows = list(rows)
    if rng is not None:
        rng.shuffle(rows)
    out = []
    for c in range(0, len(rows), batch_size * 8):
        chunk = sorted(rows[c : c + batch_size * 8], key=length)
        out += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    if rng is not None:
        rng.shuffle(out)
    return out


def train_classifier(
    plan: Sequence[Sequence[list[int]]],
    logits: Callable[[list[int]], Any],
    labels: Sequence[str],
    y: Sequence[str],
    weights: Sequence[float] | np.ndarray,
    param_groups: list[dict],
    *,
    class_weight_power: float,
    warmup: float,
    cosine: bool = False,
    clip: float | None = None,
    stage: str = "tuning",
    progress: StageProgress | None = None,
) -> int:
    """Run the optimiser over `plan` (epochs of batches of rows); `logits(rows)` is the network.
    The learning rate warms up linearly, then decays linearly (or along a cosine) to 0.
    Returns the number of steps taken."""
    import torch

    index = {lab: k for k, lab in enumerate(labels)}
    target = torch.tensor([index[v] for v in y])
    w = np.asarray(weights, dtype=float)
    loss_w = np.maximum(w, 1.0)
    counts = np.bincount(target.numpy(), weights=w, minlength=len(labels))
    cw = (counts.sum() / (len(labels) * np.maximum(counts, 1e-9))) ** class_weight_power
    cw = torch.tensor(np.where(counts > 0, cw, 0.0), dtype=torch.float32)
    total = sum(len(p) for p in plan)
    if total == 0:
        raise MiLlmError("the expert has no training utterances")
    opt = torch.optim.AdamW(param_groups, weight_decay=0.01)
    warm = max(1, int(warmup * total))

    def shape(s: int) -> float:
        left = max(0.0, (total - s) / max(1, total - warm))
        if cosine:
            return (s + 1) / warm if s < warm else 0.5 * (1 - np.cos(np.pi * min(1.0, left)))
        return min(1.0, (s + 1) / warm) * left

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    params = [p for g in param_groups for p in g["params"]]
    step = 0
    for batches in plan:
        for rows in batches:
            out = logits(rows)
            dev = out.device  # the network's (a GPU's when it has one)
            t, lw = target[rows].to(dev), torch.tensor(loss_w[rows], dtype=torch.float32, device=dev)
            per = torch.nn.functional.cross_entropy(out, t, weight=cw.to(dev), reduction="none") * lw
            # normalised like CrossEntropyLoss(weight=...): by the batch's total weight
            loss = per.sum() / (cw.to(dev)[t] * lw).sum().clamp(min=1e-9)
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(stage, step, total)
    return step
