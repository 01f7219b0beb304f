"""What every LoRA trainer shares, whatever its loss: an accelerate training loop, so one code
path runs on a CPU, one GPU, or many through `accelerate launch` (DDP, DeepSpeed ZeRO-2/3,
FSDP), with checkpoints, resume, progress, the training log and the saved adapter.

`LoraTrainer.run()` is a sequence of named steps:

    set_up           the output folder (and the checkpoint to resume from), accelerator, seed
    prepare_data     samples, tokenizer, the objective's examples, the optimizer-step schedule
    build_model      the base model with LoRA layers, wrapped in the objective's loss
    build_optimizer  AdamW, the learning-rate scheduler, accelerate's preparation
    resume           the latest checkpoint's weights, optimizer, RNG states and counters
    write_summary    train_config.json (settings, model, data, schedule, runtime)
    train_loop       windows of `grad_accum` micro-batches: stop requests, progress, log, checkpoints
    finish           the adapter, the summary's result

A subclass supplies the objective (`encode`, `wrap_model`, `windows`, `window_counts`,
`train_window`; `mi_llm.train.sft.SftTrainer` is LoRA SFT, `mi_llm.train.preference.PreferenceTrainer`
DPO and KTO on preference pairs) and reuses the rest.

Checkpoints every `save_steps` and when interrupted (Ctrl-C, SIGTERM): the run stops at the
end of the current optimizer step, so a resumed run repeats nothing and gives the same
adapter as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer, write_json
from mi_llm.layout import AdapterPaths
from mi_llm.train import checkpoints as ck
from mi_llm.train.adapter import load_peft_model, register_adapter_hooks, save_adapter
from mi_llm.train.config import TrainConfig, check_resume_compatible
from mi_llm.train.data import TrainData, load_train_data, make_schedule
from mi_llm.train.memory import peak_rss_mb, release_memory
from mi_llm.train.precision import cpu_description, resolve_precision

log = logging.getLogger(__name__)

Window = TypeVar("Window")  # what one optimizer step trains on (the subclass's micro-batches)


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


@dataclass
class Counters:
    """What a checkpoint records besides the weights, so a resumed run continues from it."""

    step: int = 0
    tokens: int = 0
    target_tokens: int = 0
    elapsed_before: float = 0.0  # training time of the earlier invocations of this run


class StopFlag:
    """First SIGINT/SIGTERM: finish the optimizer step, checkpoint, stop. Second SIGINT: abort."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "stop requested: finishing this optimizer step and saving a checkpoint (Ctrl-C again aborts without saving)"
        )

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- accelerate, output folder, log, progress


def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    # An explicit --precision wins; with auto, `accelerate launch` sets it from its config, and
    # alone it is bf16 where the GPU or CPU computes bf16 natively (mi_llm.train.precision).
    mp = None
    if cfg.precision != "auto" or not os.environ.get("ACCELERATE_MIXED_PRECISION"):
        cuda = torch.cuda.is_available() and not _cpu_forced()
        precision = resolve_precision(cfg.precision, cuda, cuda and torch.cuda.is_bf16_supported())
        mp = "bf16" if precision == "bf16" else "no"
        _forget_other_precision(mp)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp)
    ds = acc.state.deepspeed_plugin
    if ds is not None:  # no prepared dataloader: DeepSpeed must be told the batch geometry
        c = ds.deepspeed_config
        c["train_micro_batch_size_per_gpu"] = cfg.batch_size
        c["gradient_accumulation_steps"] = cfg.grad_accum
        c["train_batch_size"] = cfg.batch_size * cfg.grad_accum * acc.num_processes
        c["gradient_clipping"] = cfg.max_grad_norm
    return acc


def _forget_other_precision(mp: str) -> None:
    """accelerate keeps one precision per process: a later run in the same process (the
    pipeline's models, tests) with another precision needs its state cleared first (the
    process group, if any, is kept)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mp and "DEEPSPEED" not in str(state.get("distributed_type")):
        AcceleratorState._reset_state(reset_partial_state=False)


def _cpu_forced() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def clear_unless_resumable(cfg: TrainConfig) -> bool:
    """For a pipeline stage that (re)runs to train for `cfg`: an output folder holding an
    interrupted run with the same options is kept (training resumes from its checkpoint);
    one holding a finished run, or a run with other options, is removed, so that training
    starts over instead of stopping with "--resume with other options" or "already
    finished" (the stage owns the folder and rewrites it). Returns True when it removed one."""
    out = Path(cfg.output).expanduser()
    cfg_file = AdapterPaths(out).train_config
    if not cfg_file.is_file():
        return False  # nothing of ours, or checkpoints only: the trainer decides
    try:
        saved = json.loads(cfg_file.read_text(encoding="utf-8")).get("config", {})
        check_resume_compatible(saved, cfg, cfg_file)
        same = True
    except (MiLlmError, ValueError, AttributeError):
        same = False
    if same and ck.latest_checkpoint(out) is not None:
        return False
    log.info("%s: %s; training starts over", out, "finished" if same else "trained with other options")
    shutil.rmtree(out)
    return True


def prepare_output(cfg: TrainConfig, resume: bool) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """The output folder, the checkpoint to resume from and its state."""
    out = Path(cfg.output).expanduser()
    cfg_file = AdapterPaths(out).train_config
    latest = ck.latest_checkpoint(out)
    if not resume:
        if latest is not None or cfg_file.is_file():
            raise MiLlmError(
                f"{out}: already holds a training run; pass --resume to continue it or choose another --output"
            )
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


def truncate_log(path: Path, step: int) -> None:
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


def training_progress(total: int, start: int, enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mi_llm.console import console

    p = Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
    task = p.add_task("train", total=total, completed=start, loss="-", tps="-")
    return p, task


# ---------------------------------------------------------------- the trainer


class LoraTrainer(ABC, Generic[Window]):
    """Trains a LoRA adapter into `cfg.output`; `on_step(step)` is called after each optimizer
    step (tests use it to interrupt a run at a known step)."""

    # What the loss is averaged over (the first count of `window_counts`), as the log names it.
    loss_unit = "target_tokens"
    lengths: list[int]  # each example's tokens, set by `encode`

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        show_progress: bool = True,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg.model_copy(update={"data": str(Path(cfg.data).expanduser().resolve())})
        self.resume_requested = resume
        self.show_progress = show_progress
        self.on_step = on_step
        self.counters = Counters()
        self.interrupted = False
        self.last_loss: float | None = None
        self.run_tokens = 0  # tokens trained by this invocation (for its tokens/s)
        self.summary: dict[str, Any] = {}
        self.compiled_layers = 0
        self.compile_reason = "not built"

    # ---- what the objective supplies

    @abstractmethod
    def encode(self, tokenizer: Any) -> int:
        """Turn `self.data` into the objective's examples; returns how many there are."""

    @abstractmethod
    def data_summary(self) -> dict[str, Any]:
        """The examples' statistics, for train_config.json's `data`."""

    @abstractmethod
    def describe_data(self) -> str:
        """The examples in a few words, for the log (no conversation text)."""

    @abstractmethod
    def wrap_model(self, peft_model: Any) -> torch.nn.Module:
        """The module that computes the loss; it holds `peft_model` as its attribute `model`."""

    @abstractmethod
    def windows(self, start_step: int) -> Iterator[Window]:
        """This process's windows (one per optimizer step) from optimizer step `start_step` on."""

    @abstractmethod
    def window_counts(self, window: Window) -> tuple[int, int]:
        """(target tokens, tokens) of this process's part of `window`."""

    @abstractmethod
    def train_window(self, window: Window, n_targets: int) -> tuple[torch.Tensor, Any]:
        """Forward and backward over `window`, then one optimizer step (`optimizer_step`);
        returns (this process's sum of losses, float64, the gradient norm or None).
        `n_targets`: the window's target tokens over all processes, what the loss is divided by."""

    def result_summary(self) -> dict[str, Any]:
        """The objective's own entries of train_config.json's `result`."""
        return {}

    # ---- the steps

    def run(self) -> TrainResult:
        self.set_up()
        self.prepare_data()
        self.build_model()
        self.build_optimizer()
        self.resume()
        self.write_summary()
        self.train_loop()
        return self.finish()

    def set_up(self) -> None:
        from accelerate.utils import set_seed

        self.out, self.checkpoint, self.checkpoint_state = prepare_output(self.cfg, self.resume_requested)
        self.paths = AdapterPaths(self.out)
        self.acc = make_accelerator(self.cfg)
        set_seed(self.cfg.seed)
        self.main = self.acc.is_main_process
        self.world, self.rank = self.acc.num_processes, self.acc.process_index

    def prepare_data(self) -> None:
        from mi_llm.llm.load import load_tokenizer
        from mi_llm.llm.resolve import resolve_model

        cfg = self.cfg
        self.data = self.load_data()
        self.rm = resolve_model(cfg.model)
        tokenizer = load_tokenizer(self.rm)
        n_examples = self.encode(tokenizer)
        del tokenizer  # a 262k-entry tokenizer holds ~300 MB that training does not need
        release_memory()
        self.schedule = make_schedule(n_examples, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps, self.world)

    def load_data(self) -> TrainData:
        """What `--data` names (round samples; a preference trainer reads its pairs here)."""
        return load_train_data(self.cfg.data)

    def build_model(self) -> None:
        dtype = torch.bfloat16 if self.acc.mixed_precision == "bf16" else torch.float32
        self._load_started = time.monotonic()
        self.peft_model = load_peft_model(self.cfg, self.rm, dtype)
        self.model = self.wrap_model(self.peft_model)
        self.compile_decoder()

    def compile_decoder(self) -> None:
        """torch.compile the decoder layers where it pays (mi_llm.train.compiled)."""
        from mi_llm.train.compiled import choose_compile, compile_decoder_layers
        from mi_llm.train.loss import causal_lm_of

        cfg = self.cfg
        mean_len = sum(self.lengths) / max(1, len(self.lengths))
        planned = round(self.schedule.total_steps * cfg.grad_accum * cfg.batch_size * self.world * mean_len)
        choice = choose_compile(cfg.compile, self.acc.device.type, self.world, cfg.method, planned)
        self.compiled_layers = compile_decoder_layers(causal_lm_of(self.peft_model)) if choice.compile else 0
        self.compile_reason = choice.reason
        log.info(
            "compile: %s (%s)", f"{self.compiled_layers} decoder layers" if choice.compile else "no", choice.reason
        )

    def build_optimizer(self) -> None:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.acc
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.params)
        self.n_total = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.schedule.total_steps)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=self.schedule.total_steps,
        )
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        # Not prepared: accelerate would step it once per process. Stepped once per optimizer step.
        acc.register_for_checkpointing(self.scheduler)
        register_adapter_hooks(acc)
        self.load_seconds = time.monotonic() - self._load_started

    def resume(self) -> None:
        log_path = self.paths.train_log
        if self.checkpoint is not None and self.checkpoint_state is not None:
            self.acc.load_state(str(self.checkpoint))
            state = self.checkpoint_state
            self.counters = Counters(
                step=int(state["step"]),
                tokens=int(state["tokens"]),
                target_tokens=int(state["target_tokens"]),
                elapsed_before=float(state.get("elapsed", 0.0)),
            )
            log.info("resumed from %s (step %d of %d)", self.checkpoint, self.counters.step, self.schedule.total_steps)
            if self.main:
                truncate_log(log_path, self.counters.step)
        elif self.main and log_path.exists():
            log_path.unlink()  # a run restarted from scratch logs from step 1 again

    @property
    def base_name(self) -> str:
        """The base model as the adapter names it: as the user did, a local folder by its path."""
        return self.rm.name if self.rm.source != "local" else str(self.rm.path)

    def write_summary(self) -> None:
        cfg, acc, data, sched = self.cfg, self.acc, self.data, self.schedule
        self.summary = {
            "config": cfg.model_dump(),
            "model": self.rm.describe(),
            "data": {
                "samples_file": str(data.samples_file),
                "build_dir": str(data.build_dir) if data.build_dir else None,
                **self.data_summary(),
            },
            "schedule": {
                "total_steps": sched.total_steps,
                "micro_batches_per_epoch": sched.micro_per_epoch,
                "warmup_steps": self.warmup_steps,
                "processes": self.world,
            },
            "parameters": {"trainable": self.n_trainable, "total": self.n_total},
            "runtime": {
                "device": str(acc.device),
                "mixed_precision": acc.mixed_precision,
                "precision": "bf16" if acc.mixed_precision == "bf16" else "fp32",
                "compiled_layers": self.compiled_layers,
                "compile": self.compile_reason,
                **({"cpu": cpu_description()} if acc.device.type == "cpu" else {}),
                "distributed": str(acc.distributed_type),
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "peft": __import__("peft").__version__,
            },
        }
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.paths.train_config, self.summary)
            log.info(
                "%s, %d optimizer steps; %.2f%% of %d parameters trainable",
                self.describe_data(),
                sched.total_steps,
                100 * self.n_trainable / self.n_total,
                self.n_total,
            )

    def train_loop(self) -> None:
        windows = self.windows(self.counters.step)
        self._started = time.monotonic()
        self._progress, self._task = training_progress(
            self.schedule.total_steps, self.counters.step, self.main and self.show_progress
        )
        self._log_file = open(self.paths.train_log, "a", encoding="utf-8") if self.main else None
        try:
            with StopFlag() as stop, self._progress:
                for window in windows:
                    counts = self._window_counts_everywhere(window, stop.requested)
                    if counts is None:
                        self.interrupted = True
                        break
                    n_targets, n_tokens = counts
                    step_started = time.monotonic()
                    window_loss, grad_norm = self.train_window(window, n_targets)
                    self.end_step(window_loss, grad_norm, n_targets, n_tokens, step_started)
                if self.interrupted:
                    self.save_checkpoint(self.counters.step, self._elapsed(time.monotonic()))
        finally:
            if self._log_file:
                self._log_file.close()

    def _window_counts_everywhere(self, window: Window, stop_requested: bool) -> tuple[int, int] | None:
        """(target tokens, tokens) of the window over all processes; None when any process was
        asked to stop (all of them stop at the same step)."""
        n_targets, n_tokens = self.window_counts(window)
        local = torch.tensor([n_targets, n_tokens, float(stop_requested)], dtype=torch.float64, device=self.acc.device)
        total = self.acc.reduce(local, reduction="sum") if self.world > 1 else local
        if total[2] > 0:
            return None
        return int(total[0]), int(total[1])

    def optimizer_step(self) -> Any:
        """Clip (when `max_grad_norm` > 0), step, zero the gradients; the gradient norm or None.
        Called by `train_window` when accelerate syncs the gradients (the window's last micro-batch)."""
        grad_norm = None
        if self.cfg.max_grad_norm > 0:
            grad_norm = self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _elapsed(self, now: float) -> float:
        return self.counters.elapsed_before + now - self._started

    def end_step(
        self, window_loss: torch.Tensor, grad_norm: Any, n_targets: int, n_tokens: int, step_started: float
    ) -> None:
        """After an optimizer step: the scheduler, the counters, progress, log, checkpoint."""
        c, cfg = self.counters, self.cfg
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        c.step += 1
        if self.world > 1:
            window_loss = self.acc.reduce(window_loss, reduction="sum")
        self.last_loss = float(window_loss) / n_targets
        c.tokens += n_tokens
        c.target_tokens += n_targets
        self.run_tokens += n_tokens
        now = time.monotonic()
        elapsed = self._elapsed(now)
        tokens_per_s = self.run_tokens / max(now - self._started, 1e-9)
        if self.main:
            self._progress.update(
                self._task, completed=c.step, loss=f"{self.last_loss:.4f}", tps=f"{tokens_per_s:,.0f}"
            )
            if c.step % cfg.log_steps == 0 or c.step == self.schedule.total_steps:
                self.write_log_record(
                    {
                        "step": c.step,
                        "epoch": round(self.schedule.epoch_of(c.step * cfg.grad_accum), 4),
                        "loss": round(self.last_loss, 6),
                        "lr": lr,
                        "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                        "tokens": c.tokens,
                        self.loss_unit: c.target_tokens,
                        "step_tokens_per_s": round(n_tokens / max(now - step_started, 1e-9), 1),
                        "tokens_per_s": round(tokens_per_s, 1),
                        "elapsed": round(elapsed, 3),
                    }
                )
        if c.step % cfg.save_steps == 0 and c.step < self.schedule.total_steps:
            self.save_checkpoint(c.step, elapsed)
        if self.on_step is not None:
            self.on_step(c.step)

    def write_log_record(self, record: dict[str, Any]) -> None:
        assert self._log_file is not None  # the main process's
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()

    def save_checkpoint(self, at: int, elapsed: float) -> None:
        acc, c = self.acc, self.counters
        final = ck.checkpoints_dir(self.out) / ck.checkpoint_name(at)
        if final.exists():  # saved at this step already (e.g. save_steps then a stop)
            return
        tmp = final.with_name(f".tmp-{final.name}")
        acc.wait_for_everyone()
        # DeepSpeed saves the engine's own checkpoint: leave the frozen base weights out.
        extra = {"exclude_frozen_parameters": True} if acc.distributed_type.name == "DEEPSPEED" else {}
        acc.save_state(str(tmp), **extra)
        acc.wait_for_everyone()
        if self.main:
            write_json(
                tmp / ck.STATE_FILE,
                {
                    "step": at,
                    "tokens": c.tokens,
                    "target_tokens": c.target_tokens,
                    "elapsed": elapsed,
                    "total_steps": self.schedule.total_steps,
                },
            )
            os.replace(tmp, final)
            ck.prune(self.out, self.cfg.save_total_limit)
        acc.wait_for_everyone()

    def finish(self) -> TrainResult:
        c, acc = self.counters, self.acc
        seconds = time.monotonic() - self._started
        result = TrainResult(
            output=self.out,
            steps=c.step,
            interrupted=self.interrupted,
            final_loss=self.last_loss,
            tokens=c.tokens,
            target_tokens=c.target_tokens,
            seconds=seconds,
            tokens_per_s=self.run_tokens / max(seconds, 1e-9),
            peak_rss_mb=peak_rss_mb(),
            main_process=self.main,
        )
        self.summary["result"] = {
            "steps": c.step,
            "finished": not self.interrupted,
            "final_loss": self.last_loss,
            "tokens": c.tokens,
            self.loss_unit: c.target_tokens,
            "seconds_this_run": round(seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "tokens_per_s_this_run": round(result.tokens_per_s, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1),
            **self.result_summary(),
            "elapsed_total": round(c.elapsed_before + seconds, 3),
        }
        result.summary = self.summary
        if not self.interrupted:
            save_adapter(acc, self.model, self.out, self.base_name)
            if self.main:  # checkpoints only serve --resume; the finished adapter replaces them
                shutil.rmtree(ck.checkpoints_dir(self.out), ignore_errors=True)
        if self.main:
            write_json(self.paths.train_config, self.summary)
        acc.wait_for_everyone()
        acc.end_training()
        return result
