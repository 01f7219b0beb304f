"""`mi-llm train` (LoRA SFT) and `mi-llm export` (merge + safetensors + GGUF)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from mi_llm.cli.options import INT32_MAX, field_default, field_option
from mi_llm.cli.options import seed as seed_check
from mi_llm.console import console, setup_logging
from mi_llm.layout import AdapterPaths
from mi_llm.train.config import TrainConfig


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
    model: str = field_option(TrainConfig, "model", "--model", "-m"),
    data: Path = field_option(TrainConfig, "data", "--data", "-d"),
    output: Path = field_option(TrainConfig, "output", "--output", "-o"),
    epochs: float = field_option(TrainConfig, "epochs"),
    max_steps: int | None = field_option(TrainConfig, "max_steps", le=INT32_MAX),
    seed: int = field_option(TrainConfig, "seed", callback=seed_check),
    max_length: int = field_option(TrainConfig, "max_length", le=INT32_MAX),
    lr: float = field_option(TrainConfig, "lr"),
    lr_scheduler: str = field_option(TrainConfig, "lr_scheduler"),
    grad_accum: int = field_option(TrainConfig, "grad_accum", le=INT32_MAX),
    batch_size: int = field_option(TrainConfig, "batch_size", le=INT32_MAX),
    warmup_ratio: float = field_option(TrainConfig, "warmup_ratio"),
    weight_decay: float = field_option(TrainConfig, "weight_decay"),
    max_grad_norm: float = field_option(TrainConfig, "max_grad_norm"),
    lora_r: int = field_option(TrainConfig, "lora_r", le=INT32_MAX),
    lora_alpha: float = field_option(TrainConfig, "lora_alpha"),
    lora_dropout: float = field_option(TrainConfig, "lora_dropout"),
    target_modules: str = field_option(TrainConfig, "target_modules"),
    records: str = field_option(TrainConfig, "records"),
    skip_long: bool = typer.Option(
        field_default(TrainConfig, "on_overflow") == "skip",
        "--skip-long",
        help="skip (and count) samples whose query + reply exceed --max-length instead of failing (on_overflow: skip)",
    ),
    share_prefix: bool = field_option(TrainConfig, "share_prefix", "--share-prefix/--no-share-prefix"),
    save_steps: int = field_option(TrainConfig, "save_steps"),
    save_total_limit: int = field_option(TrainConfig, "save_total_limit"),
    log_steps: int = field_option(TrainConfig, "log_steps"),
    logits_chunk: int = field_option(TrainConfig, "logits_chunk", le=INT32_MAX),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in --output"),
    export_llamafactory: Path | None = typer.Option(
        None, "--export-llamafactory", help="also write the equivalent LLaMA-Factory YAML here"
    ),
    gradient_checkpointing: bool = field_option(TrainConfig, "gradient_checkpointing", "--gradient-checkpointing"),
    precision: str = field_option(TrainConfig, "precision"),
    compile: str = field_option(TrainConfig, "compile", "--compile"),
    method: str = field_option(TrainConfig, "method"),
    adapter: str | None = field_option(TrainConfig, "adapter", "--adapter", "-a"),
    beta: float = field_option(TrainConfig, "beta"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """LoRA fine-tuning on round samples (loss on counselor replies only), or preference
    training (--method dpo|kto) on pairs from `mi-llm prefs build`, from the SFT --adapter.

    Runs on CPU, one GPU, or many with `accelerate launch --config_file configs/accelerate/<x>.yaml -m mi_llm train ...`.
    """
    from pydantic import ValidationError

    from mi_llm.errors import MiLlmError
    from mi_llm.io import describe_validation_error

    setup_logging(verbose)
    _quiet_libraries()
    if not data.exists():  # before the heavy imports of the training stack
        raise MiLlmError(f"{data}: no such file or folder")
    try:
        cfg = TrainConfig(
            model=model,
            data=str(data),
            output=str(output),
            epochs=epochs,
            max_steps=max_steps,
            seed=seed,
            max_length=max_length,
            lr=lr,
            lr_scheduler=lr_scheduler,
            grad_accum=grad_accum,
            batch_size=batch_size,
            warmup_ratio=warmup_ratio,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            records=records,
            on_overflow="skip" if skip_long else "error",
            share_prefix=share_prefix,
            gradient_checkpointing=gradient_checkpointing,
            precision=precision,
            compile=compile,
            save_steps=save_steps,
            save_total_limit=save_total_limit,
            log_steps=log_steps,
            logits_chunk=logits_chunk,
            method=method,
            adapter=adapter,
            beta=beta,
        )
    except ValidationError as e:
        raise MiLlmError(f"bad option: {describe_validation_error(e)}") from None
    if cfg.method == "sft":
        from mi_llm.train.sft import train

        r = train(cfg, resume=resume, export_llamafactory=export_llamafactory)
    else:
        if export_llamafactory is not None:
            raise MiLlmError(
                "--export-llamafactory writes SFT configs; for preference pairs use `mi-llm prefs export --llamafactory`"
            )
        from mi_llm.train.preference import train_preferences

        r = train_preferences(cfg, resume=resume)
    if not r.main_process:  # the main process reports for all
        raise typer.Exit(130 if r.interrupted else 0)
    if r.interrupted:
        console.print(
            f"interrupted after step {r.steps}; checkpoint saved in {r.output / 'checkpoints'}; "
            "continue with the same command and --resume"
        )
        raise typer.Exit(130)
    loss = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
    unit = "target" if cfg.method == "sft" else "pairs"
    console.print(
        f"trained {r.steps} steps: final loss {loss}, {r.tokens:,} tokens ({r.target_tokens:,} {unit}), "
        f"{r.tokens_per_s:,.0f} tokens/s, peak RSS {r.peak_rss_mb:,.0f} MB"
    )
    console.print(f"adapter: {r.output}  (log: {AdapterPaths(r.output).train_log})")


def export_cmd(
    adapter: Path = typer.Option(
        ..., "--adapter", "-a", help="the --output folder of `mi-llm train` (or an adapter folder)"
    ),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the merged model"),
    model: str | None = typer.Option(None, "--model", "-m", help="base model; default: the one the adapter names"),
    gguf: str = typer.Option("", "--gguf", help="also write GGUF files, e.g. f16,q8_0 (bf16, f32 too)"),
    dtype: str = typer.Option(
        "auto", help="dtype of the saved safetensors: auto (the base's) | float32 | bfloat16 | float16"
    ),
    llama_cpp: Path | None = typer.Option(
        None,
        "--llama-cpp",
        help="a llama.cpp tree with convert_hf_to_gguf.py (default: fetched once from the llama-cpp-python sdist)",
    ),
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
