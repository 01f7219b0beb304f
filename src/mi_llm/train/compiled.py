"""torch.compile of the decoder layers while training (`--compile auto|on|off`, issue 21).

Why: on a CPU, a training step of a small model spends about half its time outside the
matrix products (norms, rotary embeddings, casts, the activation: hundreds of small ops per
layer). Inductor fuses them. On the embedded gemma-3-270m (bf16, 2 cores with AMX): 1.5-1.7x
the tokens/s of eager in a micro-step loop; the demo's 16 steps 107 s against 133 s with the
kernels cached (docs/training.md, "Compiled layers").

What it costs: the first step compiles, 25-29 s more on 2 cores with an empty cache and
about 5 s from the cache. So `auto` compiles only where a run is long enough to repay it
(`COMPILE_MIN_TOKENS`), on a CPU, in one process, for SFT (a preference trainer's reference
pass, with the adapter off, would compile a second graph). The kernels are generated and
built on this machine for this CPU at run time, so nothing depends on the machine that
built mi-llm; they are cached in the mi-llm home folder, not in /tmp (torch's precompiled
headers stay in its /tmp default: it fixes that folder when it is imported). A compile that
fails (no C++ compiler, an unsupported op) falls back to eager with a warning (dynamo's
`suppress_errors`) instead of stopping the run.

Layer 0 stays eager: its input (the frozen embedding's output) needs no gradient and every
later layer's does, so compiling it would build a second graph for one layer's worth of gain.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Literal

from mi_llm.errors import MiLlmError
from mi_llm.llm.home import mi_llm_home

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "on", "off"]

# auto: compile runs that plan at least this many tokens. The cold compile (25-29 s) is repaid
# at the ~0.6 ms a token it saved in the demo's training (after the first step: 86 s against
# 117 s for 49k tokens), i.e. after about 43k tokens.
COMPILE_MIN_TOKENS = 40_000
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class CompileChoice:
    compile: bool
    reason: str  # for the log and train_config.json


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor's CPU kernels need (CXX, else g++ / c++ / clang++ on PATH)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (found := shutil.which(name)):
            return found
    return None


def choose_compile(
    mode: CompileMode, device_type: str, processes: int, method: str, planned_tokens: int
) -> CompileChoice:
    """Whether to compile, and why. `on` without a C++ compiler on a CPU is an error."""
    if mode == "off":
        return CompileChoice(False, "--compile off")
    if device_type == "cpu" and cxx_compiler() is None:
        if mode == "on":
            raise MiLlmError("--compile on: no C++ compiler found (set CXX or install g++); use --compile off")
        return CompileChoice(False, "no C++ compiler for Inductor's CPU kernels")
    if mode == "on":
        return CompileChoice(True, "--compile on")
    if device_type != "cpu":
        return CompileChoice(False, f"auto: compiles on a CPU only (not measured on {device_type})")
    if processes > 1:
        return CompileChoice(False, "auto: one process only")
    if method != "sft":
        return CompileChoice(False, f"auto: sft only ({method}'s reference pass would compile a second graph)")
    if planned_tokens < COMPILE_MIN_TOKENS:
        return CompileChoice(
            False, f"auto: {planned_tokens} planned tokens, under {COMPILE_MIN_TOKENS} the compile would not repay"
        )
    return CompileChoice(True, f"auto: {planned_tokens} planned tokens")


def use_inductor_cache_in_home() -> None:
    """Inductor's kernels cached in the mi-llm home folder, unless the user chose a folder.
    torch fills the variable with its /tmp default the first time anything asks, so a value
    equal to that default counts as not chosen."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get(INDUCTOR_CACHE_ENV)
    if given is None or os.path.abspath(given) == os.path.abspath(default_cache_dir()):
        os.environ[INDUCTOR_CACHE_ENV] = str(mi_llm_home() / "cache" / "inductor")


def compile_decoder_layers(lm: Any) -> int:
    """Compile every decoder layer of `lm` but the first, in place; returns how many."""
    import torch._dynamo

    use_inductor_cache_in_home()
    torch._dynamo.config.suppress_errors = True  # a failed compile runs that code eagerly
    layers = getattr(lm.get_decoder(), "layers", None)
    if layers is None:
        log.warning("--compile: %s has no decoder layers list; training eagerly", type(lm).__name__)
        return 0
    for layer in list(layers)[1:]:
        layer.compile(dynamic=True)  # one graph for every sequence length
    return max(0, len(layers) - 1)
