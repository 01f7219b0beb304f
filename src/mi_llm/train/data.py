"""Training data: round samples -> token ids and labels that fit the length budget, and the
order of micro-batches (seeded, resumable, grouped by length, no padding at batch size 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mi_llm.build.samples import Sample, read_samples
from mi_llm.errors import MiLlmError
from mi_llm.layout import TRAIN_SAMPLES, BuildPaths
from mi_llm.llm.templates import IGNORE_INDEX

log = logging.getLogger(__name__)

# (tokenizer, messages, last_only) -> (input_ids, labels); mi_llm.llm.templates.encode_chat.
ChatEncoder = Callable[[Any, Sequence[dict[str, str]], bool], tuple[list[int], list[int]]]


@dataclass
class TrainData:
    samples_file: Path
    build_dir: Path | None  # the build folder, when --data named one (or the file lies in one)
    samples: list[Sample]


def resolve_data(data: str | Path) -> tuple[Path, Path | None]:
    """--data is a samples JSONL or a build folder holding samples.train.jsonl."""
    p = Path(data).expanduser()
    if p.is_dir():
        f = BuildPaths(p).train_samples
        if not f.is_file():
            raise MiLlmError(f"{p}: not a build folder (no {TRAIN_SAMPLES}); run `mi-llm data build` first")
        return f.resolve(), p.resolve()
    if p.is_file():
        parent = p.resolve().parent
        return p.resolve(), parent if BuildPaths(parent).dataset_info.is_file() else None
    raise MiLlmError(f"{p}: no such file or folder")


def load_train_data(data: str | Path) -> TrainData:
    f, build = resolve_data(data)
    samples = read_samples(f)
    if not samples:
        raise MiLlmError(f"{f}: no samples")
    return TrainData(f, build, samples)


def select_records(samples: Sequence[Sample], records: str) -> list[Sample]:
    """rounds: every sample. dialogues: per dialogue only its last round, which carries the
    whole history, so one record trains every counselor turn of the dialogue."""
    if records == "rounds":
        return list(samples)
    last: dict[str, Sample] = {}
    for s in samples:
        if s.dialogue_id not in last or s.round > last[s.dialogue_id].round:
            last[s.dialogue_id] = s
    return sorted(last.values(), key=lambda s: (s.dialogue_id, s.round))


@dataclass
class Example:
    sample_id: str
    input_ids: list[int]
    labels: list[int]
    dropped_rounds: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        # The first token is never predicted (nothing precedes it).
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass
class EncodeStats:
    samples: int = 0
    examples: int = 0
    skipped_too_long: int = 0
    skipped_no_target: int = 0
    truncated: int = 0  # examples that lost history rounds to fit
    dropped_rounds: int = 0
    tokens: int = 0
    target_tokens: int = 0
    max_tokens: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped_ids"}
        d["skipped_ids"] = self.skipped_ids[:20]
        return d


class SampleTooLong(MiLlmError):
    pass


def _default_encoder() -> ChatEncoder:
    from mi_llm.llm.templates import encode_chat

    return lambda tok, msgs, last_only: encode_chat(tok, msgs, last_only=last_only)


def encode_sample(
    sample: Sample,
    tokenizer: Any,
    max_length: int,
    last_only: bool = True,
    encode: ChatEncoder | None = None,
    where: str = "",
) -> Example:
    """Tokens + labels of one sample; history rounds are dropped from the oldest until the
    whole fits `max_length`. Raises SampleTooLong if even the bare query + target do not fit."""
    encode = encode or _default_encoder()

    def attempt(k: int) -> tuple[list[int], list[int]]:
        s = sample.model_copy(update={"history": sample.history[k:]})
        return encode(tokenizer, s.messages(with_response=True), last_only)

    ids, labels = attempt(0)
    if len(ids) <= max_length:
        return Example(sample.sample_id, ids, labels, 0)
    n = len(sample.history)
    bare = attempt(n) if n else (ids, labels)
    if len(bare[0]) > max_length:
        raise SampleTooLong(
            f"{where}sample {sample.sample_id}: system prompt + query + target reply take {len(bare[0])} tokens "
            f"even without history, over --max-length {max_length}; raise --max-length or pass --skip-long"
        )
    # Token count falls as rounds are dropped: binary search the fewest drops that fit.
    lo, hi, best = 1, n, bare
    best_k = n
    while lo < hi:
        mid = (lo + hi) // 2
        cand = attempt(mid)
        if len(cand[0]) <= max_length:
            hi, best, best_k = mid, cand, mid
        else:
            lo = mid + 1
    if best_k != lo:  # lo == hi is the answer; encode it if the search never landed on it
        best, best_k = attempt(lo), lo
    return Example(sample.sample_id, best[0], best[1], best_k)


def encode_samples(
    samples: Sequence[Sample],
    tokenizer: Any,
    max_length: int,
    records: str = "rounds",
    on_overflow: str = "error",
    encode: ChatEncoder | None = None,
    samples_file: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Example], EncodeStats]:
    encode = encode or _default_encoder()
    last_only = records == "rounds"
    stats = EncodeStats(samples=len(samples))
    where = f"{samples_file}: " if samples_file else ""
    out: list[Example] = []
    for s in samples:
        try:
            ex = encode_sample(s, tokenizer, max_length, last_only, encode, where)
        except SampleTooLong:
            if on_overflow == "error":
                raise
            stats.skipped_too_long += 1
            stats.skipped_ids.append(s.sample_id)
            continue
        finally:
            if progress:
                progress(1)
        if ex.n_targets == 0:
            stats.skipped_no_target += 1
            stats.skipped_ids.append(s.sample_id)
            continue
        out.append(ex)
        stats.truncated += ex.dropped_rounds > 0
        stats.dropped_rounds += ex.dropped_rounds
        stats.tokens += len(ex)
        stats.target_tokens += ex.n_targets
        stats.max_tokens = max(stats.max_tokens, len(ex))
    stats.examples = len(out)
    if not out:
        raise MiLlmError(
            f"{where}no trainable sample left (skipped {stats.skipped_too_long} too long, "
            f"{stats.skipped_no_target} without target tokens)"
        )
    return out, stats


# ---------------------------------------------------------------- order of micro-batches


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This epoch's micro-batches (lists of example indices), seeded by (seed, epoch).

    Batch size 1: a shuffled order, no padding at all. Larger batches: shuffle, then sort
    by length inside mega-batches of 64 batches and cut, so each batch pads little; the
    batches are shuffled again so lengths do not trend through the epoch.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if batch_size == 1:
        return [[i] for i in order]
    mega = 64 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


@dataclass
class Schedule:
    """How the stream of micro-batches maps onto optimizer steps, for one process.

    Epochs follow each other as one stream; an accumulation window may span an epoch
    boundary, so every optimizer step sees exactly `grad_accum` micro-batches.
    """

    micro_per_epoch: int  # per process
    grad_accum: int
    total_steps: int

    @property
    def total_micro(self) -> int:
        return self.total_steps * self.grad_accum

    def epoch_of(self, micro: int) -> float:
        return micro / self.micro_per_epoch


def make_schedule(
    n_examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None, world: int = 1
) -> Schedule:
    per_epoch = math.ceil(math.ceil(n_examples / batch_size) / world)
    total = max_steps or max(1, math.ceil(epochs * per_epoch / grad_accum))
    return Schedule(per_epoch, grad_accum, total)


def micro_stream(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    start_micro: int,
    sched: Schedule,
    world: int = 1,
    rank: int = 0,
) -> Iterator[tuple[int, list[int]]]:
    """(micro index, example indices) from `start_micro` to the end of training, for `rank`."""
    micro = start_micro
    while micro < sched.total_micro:
        epoch, pos = divmod(micro, sched.micro_per_epoch)
        batches = epoch_batches(lengths, batch_size, seed, epoch)
        # Every rank gets the same count: wrap around like DistributedSampler.
        need = sched.micro_per_epoch * world
        batches = (batches * math.ceil(need / len(batches)))[:need]
        mine = batches[rank::world]
        for b in mine[pos:]:
            if micro >= sched.total_micro:
                return
            yield micro, b
            micro += 1


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-padded tensors; a batch of one has no padding and no attention mask, so the
    attention kernels take their causal fast path."""
    if len(examples) == 1:
        e = examples[0]
        return {
            "input_ids": torch.tensor([e.input_ids], dtype=torch.long),
            "attention_mask": None,
            "labels": torch.tensor([e.labels], dtype=torch.long),
        }
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
