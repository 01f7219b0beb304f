"""LoRA supervised fine-tuning: an accelerate training loop, so one code path runs on a CPU,
one GPU, or many through `accelerate launch` (DDP, DeepSpeed ZeRO-2/3, FSDP).

Per optimizer step: `grad_accum` micro-batches; the loss is the sum of token losses over
the whole window divided by the window's target tokens (over all processes), as
transformers' Trainer does, so accumulation equals one big batch. Logits are computed only
where labels exist (`mi_llm.train.loss`).

Checkpoints every `save_steps` and when interrupted (Ctrl-C, SIGTERM): the run stops at
the end of the current optimizer step, so a resumed run repeats nothing and gives the
same adapter as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer, write_json
from mi_llm.layout import ADAPTER_WEIGHTS, AdapterPaths
from mi_llm.train import checkpoints as ck
from mi_llm.train.config import TrainConfig, check_resume_compatible
from mi_llm.train.data import Example, collate, encode_samples, load_train_data, make_schedule, micro_stream, select_records

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output: Path
    steps: int
    interrupted: bool
    final_loss: float | None
    tokens: int
    target_tokens: int
    seconds: float  # training loop time of this invocation (model loading excluded)
    tokens_per_s: float
    peak_rss_mb: float
    main_process: bool = True  # False on the other ranks of a distributed run
    summary: dict[str, Any] = field(default_factory=dict)


class _StopFlag:
    """First SIGINT/SIGTERM: finish the optimizer step, checkpoint, stop. Second SIGINT: abort."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this optimizer step and saving a checkpoint "
                    "(Ctrl-C again aborts without saving)")

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _fixed_mmap_threshold(threshold: int = 1 << 20, trim: int = 4 << 20) -> None:
    """Serve every allocation of 1 MiB or more (activations, gradients) by its own mmap.

    glibc raises its mmap threshold each time a large block is freed, after which
    activations come from the heap and freed ones stay resident: measured on the embedded
    model, a fixed threshold lowers peak training RSS by about 190 MB at no visible cost.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _windows(stream: Iterator[tuple[int, list[int]]], size: int) -> Iterator[list[list[int]]]:
    buf: list[list[int]] = []
    for _, batch in stream:
        buf.append(batch)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    # `accelerate launch` sets the precision from its config; alone, bf16 on a GPU, fp32 on CPU.
    mp = None
    if not os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp)
    ds = acc.state.deepspeed_plugin
    if ds is not None:  # no prepared dataloader: DeepSpeed must be told the batch geometry
        c = ds.deepspeed_config
        c["train_micro_batch_size_per_gpu"] = cfg.batch_size
        c["gradient_accumulation_steps"] = cfg.grad_accum
        c["train_batch_size"] = cfg.batch_size * cfg.grad_accum * acc.num_processes
        c["gradient_clipping"] = cfg.max_grad_norm
    return acc


def _load_peft_model(cfg: TrainConfig, rm: Any, dtype: torch.dtype) -> Any:
    from peft import LoraConfig, get_peft_model

    from mi_llm.llm.load import load_model

    model, _ = load_model(rm, dtype=dtype, device="cpu")  # accelerate places it
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets(), task_type="CAUSAL_LM", bias="none",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in the model
        raise MiLlmError(f"LoRA on {rm.name}: {e}") from None
    # LoRA weights train in fp32 even when the base is bf16 (autocast computes in bf16).
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    peft_model.train()
    return peft_model


def _adapter_state(acc: Any, wrapper: Any) -> dict[str, torch.Tensor]:
    """Full (gathered under ZeRO-3/FSDP) state dict of the PEFT model, keys as PeftModel's."""
    sd = acc.get_state_dict(wrapper)
    return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}


def _save_adapter(acc: Any, wrapper: Any, out: Path, base_name: str) -> None:
    sd = _adapter_state(acc, wrapper)
    if acc.is_main_process:
        peft_model = acc.unwrap_model(wrapper).model
        peft_model.save_pretrained(str(out), state_dict=sd, safe_serialization=True)
        # Name the base as the user did (e.g. `gemma-3-270m`, not its cache folder), so
        # `mi-llm export --adapter` finds it wherever the cache is.
        cfg_file = AdapterPaths(out).peft_config
        conf = json.loads(cfg_file.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = base_name
        write_json(cfg_file, conf)


def _register_hooks(acc: Any) -> None:
    """accelerate's save_state would write the whole model; keep only the adapter."""

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if weights:  # DDP / single device: replace the full weights by the adapter
            weights.pop()
            if acc.is_main_process:
                acc.unwrap_model(models[0]).model.save_pretrained(os.path.join(output_dir, "adapter"))

    def load_hook(models: list[Any], input_dir: str) -> None:
        if models:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            m = models.pop()
            sd = load_file(os.path.join(input_dir, "adapter", ADAPTER_WEIGHTS))
            res = set_peft_model_state_dict(acc.unwrap_model(m).model, sd)
            bad = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
            if bad:
                raise MiLlmError(f"{input_dir}: checkpoint adapter does not fit the model ({bad[:3]})")

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines after the checkpoint's step (they will be redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
    with atomic_writer(path) as f:
        f.write("".join(x + "\n" for x in keep))


def _progress(total: int, start: int, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mi_llm.console import console

    p = Progress(
        TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )
    task = p.add_task("train", total=total, completed=start, loss="-", tps="-")
    return p, task


def prepare_output(cfg: TrainConfig, resume: bool) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """The output folder, the checkpoint to resume from and its state."""
    out = Path(cfg.output).expanduser()
    cfg_file = AdapterPaths(out).train_config
    latest = ck.latest_checkpoint(out)
    if not resume:
        if latest is not None or cfg_file.is_file():
            raise MiLlmError(f"{out}: already holds a training run; pass --resume to continue it "
                             "or choose another --output")
        return out, None, None
    if cfg_file.is_file():
        saved = json.loads(cfg_file.read_text(encoding="utf-8")).get("config", {})
        check_resume_compatible(saved, cfg, cfg_file)
    if latest is None:
        if AdapterPaths(out).weights.is_file():
            raise MiLlmError(f"{out}: the run already finished (adapter saved, no checkpoint to resume)")
        log.info("no checkpoint in %s: starting from the beginning", out)
        return out, None, None
    return out, latest, ck.read_state(latest)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    export_llamafactory: Path | None = None,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter into `cfg.output`; `on_step(step)` is called after each optimizer
    step (tests use it to interrupt a run at a known step)."""
    from transformers import get_scheduler

    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.loss import SelectiveLMLoss

    cfg = cfg.model_copy(update={"data": str(Path(cfg.data).expanduser().resolve())})
    out, ckpt, state = prepare_output(cfg, resume)
    acc = _make_accelerator(cfg)
    if acc.device.type == "cpu":
        _fixed_mmap_threshold()
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    main = acc.is_main_process

    # ---- data
    data = load_train_data(cfg.data)
    rm = resolve_model(cfg.model)
    tok = load_tokenizer(rm)
    records = select_records(data.samples, cfg.records)
    from mi_llm.train.progress import counting_progress

    with counting_progress("encoding samples", len(records), enabled=main and show_progress) as advance:
        examples, stats = encode_samples(records, tok, cfg.max_length, cfg.records, cfg.on_overflow,
                                         samples_file=data.samples_file, progress=advance)
    if stats.skipped_too_long:
        log.warning("skipped %d samples longer than --max-length %d even without history",
                    stats.skipped_too_long, cfg.max_length)
    if stats.truncated:
        log.info("%d samples lost %d history rounds (oldest first) to fit --max-length %d",
                 stats.truncated, stats.dropped_rounds, cfg.max_length)
    lengths = [len(e) for e in examples]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    del tok  # a 262k-entry tokenizer holds ~300 MB that training does not need
    _release_memory()
    world, rank = acc.num_processes, acc.process_index
    sched = make_schedule(len(examples), cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps, world)

    if export_llamafactory and main:
        from mi_llm.train.llamafactory import write_llamafactory_yaml

        write_llamafactory_yaml(export_llamafactory, cfg, rm, data, gpu=torch.cuda.is_available())
        log.info("wrote LLaMA-Factory config %s", export_llamafactory)

    # ---- model, optimizer, schedule
    dtype = torch.bfloat16 if acc.mixed_precision == "bf16" else torch.float32
    t_load = time.monotonic()
    peft_model = _load_peft_model(cfg, rm, dtype)
    fused_head = acc.distributed_type.name not in ("FSDP", "DEEPSPEED")
    wrapper = SelectiveLMLoss(peft_model, cfg.logits_chunk, fused_head=fused_head)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in wrapper.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * sched.total_steps)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=sched.total_steps)
    wrapper, optimizer = acc.prepare(wrapper, optimizer)
    # Not prepared: accelerate would step it once per process. Stepped once per optimizer step.
    acc.register_for_checkpointing(scheduler)
    _register_hooks(acc)
    load_seconds = time.monotonic() - t_load

    step, tokens_done, targets_done, elapsed_before = 0, 0, 0, 0.0
    log_path = AdapterPaths(out).train_log
    if ckpt is not None and state is not None:
        acc.load_state(str(ckpt))
        step = int(state["step"])
        tokens_done, targets_done = int(state["tokens"]), int(state["target_tokens"])
        elapsed_before = float(state.get("elapsed", 0.0))
        log.info("resumed from %s (step %d of %d)", ckpt, step, sched.total_steps)
        if main:
            _truncate_log(log_path, step)
    elif main and log_path.exists():
        log_path.unlink()  # a run restarted from scratch logs from step 1 again

    base_name = rm.name if rm.source != "local" else str(rm.path)
    summary: dict[str, Any] = {
        "config": cfg.model_dump(),
        "model": rm.describe(),
        "data": {"samples_file": str(data.samples_file), "build_dir": str(data.build_dir) if data.build_dir else None,
                 **stats.as_dict()},
        "schedule": {"total_steps": sched.total_steps, "micro_batches_per_epoch": sched.micro_per_epoch,
                     "warmup_steps": warmup, "processes": world},
        "parameters": {"trainable": n_trainable, "total": n_total},
        "runtime": {"device": str(acc.device), "mixed_precision": acc.mixed_precision,
                    "distributed": str(acc.distributed_type), "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(AdapterPaths(out).train_config, summary)
        log.info("%d examples (%d tokens, %d target tokens), %d optimizer steps; %.2f%% of %d parameters trainable",
                 stats.examples, stats.tokens, stats.target_tokens, sched.total_steps,
                 100 * n_trainable / n_total, n_total)

    # ---- the loop
    def save_checkpoint(at: int, elapsed: float) -> None:
        final = ck.checkpoints_dir(out) / ck.checkpoint_name(at)
        if final.exists():  # saved at this step already (e.g. save_steps then a stop)
            return
        tmp = final.with_name(f".tmp-{final.name}")
        acc.wait_for_everyone()
        # DeepSpeed saves the engine's own checkpoint: leave the frozen base weights out.
        extra = {"exclude_frozen_parameters": True} if acc.distributed_type.name == "DEEPSPEED" else {}
        acc.save_state(str(tmp), **extra)
        acc.wait_for_everyone()
        if main:
            write_json(tmp / ck.STATE_FILE, {"step": at, "tokens": tokens_done, "target_tokens": targets_done,
                                             "elapsed": elapsed, "total_steps": sched.total_steps})
            os.replace(tmp, final)
            ck.prune(out, cfg.save_total_limit)
        acc.wait_for_everyone()

    from mi_llm.train.loss import causal_lm_of
    from mi_llm.train.prefix import Group, SharedPrefix, max_prefix_len, plan_window, prefix_supported

    lm = causal_lm_of(peft_model)
    share_prefix = (cfg.share_prefix and world == 1 and cfg.batch_size == 1 and not cfg.gradient_checkpointing
                    and prefix_supported(lm))
    max_prefix = max_prefix_len(lm.config)
    prefix_tokens = 0  # forward/backward work saved by shared prefixes
    stream = micro_stream(lengths, cfg.batch_size, cfg.seed, step * cfg.grad_accum, sched, world, rank)
    device = acc.device
    interrupted = False
    last_loss: float | None = None
    run_tokens = 0
    t0 = time.monotonic()
    progress, task = _progress(sched.total_steps, step, main and show_progress)
    log_file = open(log_path, "a", encoding="utf-8") if main else None
    try:
        with _StopFlag() as stop, progress:
            for window in _windows(stream, cfg.grad_accum):
                batches = [[examples[i] for i in b] for b in window]
                local = torch.tensor(
                    [sum(e.n_targets for b in batches for e in b), sum(len(e) for b in batches for e in b),
                     float(stop.requested)], dtype=torch.float64, device=device)
                tot = acc.reduce(local, reduction="sum") if world > 1 else local
                if tot[2] > 0:
                    interrupted = True
                    break
                n_targets, n_tokens = int(tot[0]), int(tot[1])
                # accelerate divides by grad_accum and DDP averages over processes: undo both
                # so the gradient is d(sum of token losses)/d(theta) / (window's target tokens).
                scale = cfg.grad_accum * world / n_targets
                window_loss = torch.zeros((), dtype=torch.float64, device=device)
                grad_norm = None
                t_step = time.monotonic()
                if share_prefix:
                    plan = plan_window([b[0] for b in batches], max_prefix)
                else:
                    plan = [Group(list(range(len(batches))), 0)]
                order = [(g, i) for g in plan for i in g.members]
                shared = None
                for g, i in order:
                    if g.prefix and g.members[0] == i:
                        with acc.autocast():
                            shared = SharedPrefix(wrapper, torch.tensor([batches[i][0].input_ids[:g.prefix]],
                                                                        device=device))
                        prefix_tokens += g.prefix * (len(g.members) - 1)
                    batch = collate(batches[i], pad_id)
                    inputs = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
                    with acc.accumulate(wrapper):
                        if g.prefix:
                            assert shared is not None
                            loss_sum, _ = wrapper(inputs["input_ids"][:, g.prefix:], inputs["labels"][:, g.prefix:],
                                                  None, shared.cache())
                        else:
                            loss_sum, _ = wrapper(inputs["input_ids"], inputs["labels"], inputs["attention_mask"])
                        acc.backward(loss_sum * scale)
                        window_loss += loss_sum.detach().double()
                        if g.prefix and g.members[-1] == i:  # the group's prefix, once, before any step
                            assert shared is not None
                            shared.backward()
                            shared = None
                        if acc.sync_gradients:
                            if cfg.max_grad_norm > 0:
                                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
                            optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                if world > 1:
                    window_loss = acc.reduce(window_loss, reduction="sum")
                last_loss = float(window_loss) / n_targets
                tokens_done += n_tokens
                targets_done += n_targets
                run_tokens += n_tokens
                now = time.monotonic()
                elapsed = elapsed_before + now - t0
                tps = run_tokens / max(now - t0, 1e-9)
                if main:
                    progress.update(task, completed=step, loss=f"{last_loss:.4f}", tps=f"{tps:,.0f}")
                    if step % cfg.log_steps == 0 or step == sched.total_steps:
                        rec = {"step": step, "epoch": round(sched.epoch_of(step * cfg.grad_accum), 4),
                               "loss": round(last_loss, 6), "lr": lr,
                               "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                               "tokens": tokens_done, "target_tokens": targets_done,
                               "step_tokens_per_s": round(n_tokens / max(now - t_step, 1e-9), 1),
                               "tokens_per_s": round(tps, 1), "elapsed": round(elapsed, 3)}
                        assert log_file is not None
                        log_file.write(json.dumps(rec) + "\n")
                        log_file.flush()
                if step % cfg.save_steps == 0 and step < sched.total_steps:
                    save_checkpoint(step, elapsed)
                if on_step is not None:
                    on_step(step)
            if interrupted:
                save_checkpoint(step, elapsed_before + time.monotonic() - t0)
    finally:
        if log_file:
            log_file.close()

    seconds = time.monotonic() - t0
    result = TrainResult(
        output=out, steps=step, interrupted=interrupted, final_loss=last_loss, tokens=tokens_done,
        target_tokens=targets_done, seconds=seconds, tokens_per_s=run_tokens / max(seconds, 1e-9),
        peak_rss_mb=peak_rss_mb(), main_process=main,
    )
    summary["result"] = {
        "steps": step, "finished": not interrupted, "final_loss": last_loss, "tokens": tokens_done,
        "target_tokens": targets_done, "seconds_this_run": round(seconds, 3), "load_seconds": round(load_seconds, 3),
        "tokens_per_s_this_run": round(result.tokens_per_s, 2), "peak_rss_mb": round(result.peak_rss_mb, 1),
        "shared_prefix": share_prefix, "prefix_tokens_saved": prefix_tokens,
        "elapsed_total": round(elapsed_before + seconds, 3),
    }
    result.summary = summary
    if not interrupted:
        _save_adapter(acc, wrapper, out, base_name)
        if main:  # checkpoints only serve --resume; the finished adapter replaces them
            shutil.rmtree(ck.checkpoints_dir(out), ignore_errors=True)
    if main:
        write_json(AdapterPaths(out).train_config, summary)
    acc.wait_for_everyone()
    acc.end_training()
    return result
