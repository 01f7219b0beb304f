"""Training precision (`--precision fp32|bf16|auto`) and the CPU features that decide `auto`.

bf16 means what it means on a GPU: the frozen base weights are held in bf16, the forward and
backward run under bf16 autocast, and the LoRA weights, their gradients and AdamW's state stay
fp32. `auto` picks bf16 where the hardware computes it natively: a CUDA device that supports
it, or a CPU with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`; measured on an AMD Zen 4
without AMX in docs/training.md). Elsewhere torch converts bf16 in software, with no speed-up
to expect, so auto is fp32 there.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal

Precision = Literal["fp32", "bf16"]

# CPU flags (Linux /proc/cpuinfo names) that mean native bf16 arithmetic.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# The flags worth reporting beside a CPU benchmark.
REPORTED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> dict[str, object]:
    """What a CPU benchmark should report: the model and the flags that matter for its speed."""
    import os

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": [f for f in REPORTED_FLAGS if f in flags],
        "native_bf16": cpu_has_native_bf16(flags),
    }


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def resolve_precision(
    requested: str, cuda: bool, cuda_bf16: bool = False, flags: frozenset[str] | None = None
) -> Precision:
    """The precision a run uses: `requested` unless it is `auto`, which is bf16 on a CUDA
    device that supports it or a CPU with native bf16, else fp32."""
    if requested in ("fp32", "bf16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"precision {requested!r}: expected fp32, bf16 or auto")
    if cuda:
        return "bf16" if cuda_bf16 else "fp32"
    return "bf16" if cpu_has_native_bf16(flags) else "fp32"
