"""The training options, with the paper's defaults, saved as `train_config.json` (mi_llm.layout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_llm.errors import MiLlmError
from mi_llm.llm.resolve import DEFAULT_MODEL
from mi_llm.train.compiled import CompileMode

# Options that change what is learned: a resumed run must keep them all.
RESULT_KEYS = (
    "model",
    "data",
    "epochs",
    "max_steps",
    "seed",
    "max_length",
    "lr",
    "lr_scheduler",
    "grad_accum",
    "batch_size",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "records",
    "on_overflow",
    "share_prefix",
    "precision",
    "method",
    "adapter",
    "beta",
)


class TrainConfig(BaseModel):
    """LoRA SFT options. Defaults are the paper's (Hu et al. 2025, section Methods):
    lr 1e-4 with a cosine schedule and 10% warmup, per-device batch 1, gradient
    accumulation 8, 3 epochs; LoRA rank 8, alpha 16, dropout 0 (LLaMA-Factory's default) on every linear layer.
    """

    model_config = ConfigDict(extra="forbid")

    # The descriptions are also the help of `mi-llm train`'s options (mi_llm.cli.train).
    model: str = Field(DEFAULT_MODEL, description="model name, Hugging Face id or local folder")
    data: str = Field(description="samples.train.jsonl or a build folder (sft); a pairs file (dpo, kto)")
    output: str = Field(description="run folder: adapter, train_config.json, train_log.jsonl, checkpoints/")
    epochs: float = Field(3.0, gt=0, description="passes over the data (paper: 3)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides --epochs")
    seed: int = 42
    max_length: int = Field(
        1024, ge=16, description="tokens per sequence; history rounds are dropped from the oldest to fit"
    )
    lr: float = Field(1e-4, gt=0, description="peak learning rate (paper: 1e-4)")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field(
        "cosine", description="cosine | linear | constant_with_warmup"
    )
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step (paper: 8)")
    batch_size: int = Field(1, ge=1, description="sequences per device per micro-batch (paper: 1)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of steps of linear warm-up (paper: 0.1)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 disables")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input (LLaMA-Factory's default: 0)")
    target_modules: str = Field(
        "all-linear", description="'all-linear' or comma-separated module names (q_proj,v_proj)"
    )
    records: Literal["rounds", "dialogues"] = Field(
        "rounds",
        description="rounds: loss on the target reply r_t only (paper); "
        "dialogues: one record per dialogue, loss on every counselor turn",
    )
    on_overflow: Literal["error", "skip"] = Field(
        "error", description="a sample whose target does not fit --max-length even without history"
    )
    share_prefix: bool = Field(
        True, description="compute the prompt prefix shared by a window's samples once (single process, batch 1)"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto | fp32 | bf16: bf16 autocast with fp32 LoRA weights and optimizer state; "
        "auto = bf16 on a GPU or a CPU with native bf16 (amx_bf16, avx512_bf16), else fp32",
    )
    method: Literal["sft", "dpo", "kto"] = Field(
        "sft", description="sft: the target replies; dpo / kto: preference pairs from `mi-llm prefs build`"
    )
    adapter: str | None = Field(
        None,
        description="start from this LoRA adapter (e.g. the SFT one) and train it further; "
        "dpo / kto: it is also the reference model",
    )
    beta: float = Field(0.1, gt=0, description="dpo / kto: strength of the pull towards the reference model")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory, slower)")
    compile: CompileMode = Field(
        "auto",
        description="auto | on | off: torch.compile the decoder layers (fused kernels: training ~20% faster on "
        "a CPU; the first step compiles, ~30 s, then cached); auto = on a CPU for SFT runs long enough to repay it",
    )
    save_steps: int = Field(50, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    log_steps: int = Field(1, ge=1, description="write train_log.jsonl every N steps")
    logits_chunk: int = Field(0, ge=0, description="positions per LM-head chunk; 0 = from a memory budget")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must name modules or be 'all-linear'")
        return v

    def lora_targets(self) -> str | list[str]:
        if self.target_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]

    def result_view(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RESULT_KEYS}


# options that name files: a run folder copied or moved with its data (a pipeline's run
# directory holds both) names them by other absolute paths, yet learns the same thing
PATH_KEYS = ("data", "adapter")


def _seen_from(value: Any, output: Any) -> Any:
    """A path option as seen from the output folder (unchanged when either is missing)."""
    if not isinstance(value, str) or not isinstance(output, str):
        return value
    return os.path.relpath(Path(value).expanduser().absolute(), Path(output).expanduser().absolute())


def check_resume_compatible(saved: dict[str, Any], current: TrainConfig, path: Path) -> None:
    """A resumed run must learn the same thing: refuse if a result-changing option moved.
    Paths (`PATH_KEYS`) are compared as seen from the output folder."""

    def same(k: str) -> bool:
        if k in PATH_KEYS:
            return _seen_from(saved.get(k), saved.get("output")) == _seen_from(getattr(current, k), current.output)
        return saved.get(k) == getattr(current, k)

    diffs = [f"{k} {saved.get(k)!r} -> {getattr(current, k)!r}" for k in RESULT_KEYS if k in saved and not same(k)]
    if diffs:
        raise MiLlmError(
            f"{path}: --resume with other options than the interrupted run ({'; '.join(diffs)}); "
            "use the same options or another --output"
        )
