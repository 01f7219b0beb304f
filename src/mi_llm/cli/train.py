"""`mi-llm train` (LoRA SFT) and `mi-llm export` (merge + safetensors + GGUF)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from mi_llm.cli.options import INT32_MAX, number, seed as seed_check
from mi_llm.console import console, setup_logging
from mi_llm.layout import AdapterPaths


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("export")(export_cmd)


def _quiet_libraries() -> None:
    """Our own progress bars and log lines say what matters; keep the libraries' out."""
    for name in ("accelerate", "peft", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def train_cmd(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="model name, Hugging Face id or local folder"),
    data: Path = typer.Option(..., "--data", "-d", help="samples.train.jsonl or a build folder"),
    output: Path = typer.Option(..., "--output", "-o", help="run folder: adapter, train_config.json, train_log.jsonl, checkpoints/"),
    epochs: float = typer.Option(3.0, help="passes over the data (paper: 3)", callback=number(gt=0)),
    max_steps: Optional[int] = typer.Option(None, help="optimizer steps; overrides --epochs", callback=number(ge=1, le=INT32_MAX)),
    seed: int = typer.Option(42, callback=seed_check),
    max_length: int = typer.Option(1024, help="tokens per sequence; history rounds are dropped from the oldest to fit", callback=number(ge=16, le=INT32_MAX)),
    lr: float = typer.Option(1e-4, help="peak learning rate (paper: 1e-4)", callback=number(gt=0)),
    lr_scheduler: str = typer.Option("cosine", help="cosine | linear | constant_with_warmup"),
    grad_accum: int = typer.Option(8, help="micro-batches per optimizer step (paper: 8)", callback=number(ge=1, le=INT32_MAX)),
    batch_size: int = typer.Option(1, help="sequences per device per micro-batch (paper: 1)", callback=number(ge=1, le=INT32_MAX)),
    warmup_ratio: float = typer.Option(0.1, help="fraction of steps of linear warm-up (paper: 0.1)", callback=number(ge=0, lt=1)),
    weight_decay: float = typer.Option(0.0, callback=number(ge=0)),
    max_grad_norm: float = typer.Option(1.0, help="gradient clipping; 0 disables", callback=number(ge=0)),
    lora_r: int = typer.Option(8, help="LoRA rank", callback=number(ge=1, le=INT32_MAX)),
    lora_alpha: float = typer.Option(16, help="LoRA alpha (scale = alpha / r)", callback=number(gt=0)),
    lora_dropout: float = typer.Option(0.0, help="dropout on the LoRA input (LLaMA-Factory's default: 0)", callback=number(ge=0, lt=1)),
    target_modules: str = typer.Option("all-linear", help="'all-linear' or comma-separated module names (q_proj,v_proj)"),
    records: str = typer.Option("rounds", help="rounds: loss on the target reply r_t only (paper); dialogues: one record per dialogue, loss on every counselor turn"),
    skip_long: bool = typer.Option(False, "--skip-long", help="skip (and count) samples whose query + reply exceed --max-length instead of failing"),
    save_steps: int = typer.Option(50, help="checkpoint every N optimizer steps", callback=number(ge=1)),
    save_total_limit: int = typer.Option(2, help="checkpoints kept", callback=number(ge=1)),
    log_steps: int = typer.Option(1, help="write train_log.jsonl every N steps", callback=number(ge=1)),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in --output"),
    export_llamafactory: Optional[Path] = typer.Option(None, "--export-llamafactory", help="also write the equivalent LLaMA-Factory YAML here"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="recompute activations in backward (less memory, slower)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """LoRA fine-tuning on round samples (loss on counselor replies only).

    Runs on CPU, one GPU, or many with `accelerate launch --config_file configs/accelerate/<x>.yaml -m mi_llm train ...`.
    """
    from pydantic import ValidationError

    from mi_llm.errors import MiLlmError
    from mi_llm.io import describe_validation_error
    from mi_llm.train.config import TrainConfig

    setup_logging(verbose)
    _quiet_libraries()
    if not data.exists():  # before the heavy imports of the training stack
        raise MiLlmError(f"{data}: no such file or folder")
    try:
        cfg = TrainConfig(
            model=model, data=str(data), output=str(output), epochs=epochs, max_steps=max_steps, seed=seed,
            max_length=max_length, lr=lr, lr_scheduler=lr_scheduler, grad_accum=grad_accum, batch_size=batch_size,
            warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm, lora_r=lora_r,
            lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, records=records,
            on_overflow="skip" if skip_long else "error", save_steps=save_steps, save_total_limit=save_total_limit,
            log_steps=log_steps,
        )
    except ValidationError as e:
        raise MiLlmError(f"bad option: {describe_validation_error(e)}") from None
    from mi_llm.train.sft import train

    r = train(cfg, resume=resume, export_llamafactory=export_llamafactory,
              gradient_checkpointing=gradient_checkpointing)
    if not r.main_process:  # the main process reports for all
        raise typer.Exit(130 if r.interrupted else 0)
    if r.interrupted:
        console.print(f"interrupted after step {r.steps}; checkpoint saved in {r.output / 'checkpoints'}; "
                      "continue with the same command and --resume")
        raise typer.Exit(130)
    loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
    console.print(
        f"trained {r.steps} steps: final loss {loss}, {r.tokens:,} tokens ({r.target_tokens:,} target), "
        f"{r.tokens_per_s:,.0f} tokens/s, peak RSS {r.peak_rss_mb:,.0f} MB"
    )
    console.print(f"adapter: {r.output}  (log: {AdapterPaths(r.output).train_log})")


def export_cmd(
    adapter: Path = typer.Option(..., "--adapter", "-a", help="the --output folder of `mi-llm train` (or an adapter folder)"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the merged model"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model; default: the one the adapter names"),
    gguf: str = typer.Option("", "--gguf", help="also write GGUF files, e.g. f16,q8_0 (bf16, f32 too)"),
    dtype: str = typer.Option("auto", help="dtype of the saved safetensors: auto (the base's) | float32 | bfloat16 | float16"),
    llama_cpp: Optional[Path] = typer.Option(None, "--llama-cpp", help="a llama.cpp tree with convert_hf_to_gguf.py (default: fetched once from the llama-cpp-python sdist)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Merge a LoRA adapter into its base model: safetensors + tokenizer, and GGUF for llama.cpp."""
    from mi_llm.train.export import export

    setup_logging(verbose)
    _quiet_libraries()
    with console.status("merging the adapter and writing the model"):
        r = export(model, adapter, output, [t for t in gguf.split(",") if t.strip()], dtype=dtype, llama_cpp=llama_cpp)
    console.print(f"merged {r.adapter} into {r.base}: {r.output}")
    for t, p in r.gguf.items():
        console.print(f"GGUF {t.upper()}: {p} ({p.stat().st_size / 2**20:,.0f} MiB)")
