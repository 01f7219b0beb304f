"""Loading llama.cpp safely: the CPU backend for this CPU, and a crash probe before first use.

Two problems this module exists for (issue 15):

1. The CPU backend. mi-llm's Makefile builds llama-cpp-python with runtime CPU dispatch
   (tools/llama_cpp/build.sh: GGML_BACKEND_DL + one CPU backend library per x86-64 level,
   the AMX level left out). Such a build registers no backend by itself: `import_llama_cpp`
   asks ggml to load the best variant this CPU supports from llama_cpp/lib, before llama.cpp
   initialises. A stock build (CPU backend linked in) is used as it is.
2. Crashes in native code. A llama.cpp build can segfault on some CPUs (a native build with
   AMX kernels did, in `llama_decode`). `ensure_usable` runs a real decode of the embedded
   GGUF once in a child process; its result is cached per (llama.cpp build, CPU), so the cost
   (a few seconds) is paid once. A failed probe becomes one line and, where the user did not
   ask for llama.cpp by name, a fallback to the hf backend, instead of a dead process.

`python -m mi_llm.llm.llamacpp_runtime` runs the probe's child decode and prints its result.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 300
# Marker written into llama_cpp/lib by tools/llama_cpp/build.sh: which mi-llm build this is.
BUILD_MARKER = "mi-llm-build.json"
# Set to 1 to skip the probe (e.g. inside the probe's own child, or when you know the build).
SKIP_ENV = "MI_LLM_SKIP_LLAMACPP_PROBE"


def import_llama_cpp(check: bool = True) -> Any:
    """`llama_cpp`, with a CPU backend loaded (see the module docstring).

    With `check` (the default) the build must first pass the crash probe on this CPU, else a
    one-line MiLlmError (exit 2): every in-process use of llama.cpp comes through here, so a
    build that would segfault is stopped before it can take the process down.
    """
    if check:
        ensure_usable(explicit=True)
    try:
        import llama_cpp
    except ImportError:
        raise MiLlmError(
            "the llamacpp backend needs llama-cpp-python: pip install llama-cpp-python "
            "(or pip install 'mi-llm[llamacpp]')"
        ) from None
    except OSError as e:  # the shared library itself does not load
        raise MiLlmError(f"llama-cpp-python is installed but its library does not load ({e})") from None
    load_cpu_backend(llama_cpp)
    return llama_cpp


def lib_dir(llama_cpp: Any) -> Path:
    """Where llama_cpp loaded its libraries from (LLAMA_CPP_LIB_PATH overrides the package's)."""
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")


def cpu_variants(llama_cpp: Any) -> list[Path]:
    """The CPU backend variants of a runtime-dispatch build (empty for a stock build)."""
    return sorted(lib_dir(llama_cpp).glob("libggml-cpu-*.so"))


_loaded = False


def load_cpu_backend(llama_cpp: Any) -> None:
    """Have ggml load its best CPU variant for this CPU (runtime-dispatch builds only); once."""
    global _loaded
    if _loaded or not cpu_variants(llama_cpp):
        return
    # The copy libllama loaded is the one named by its soname (libggml.so.0): a wheel stores
    # libggml.so, .so.0 and .so.0.x as separate files, and loading another one would give a
    # second ggml with its own, separate backend registry.
    sonames = sorted(lib_dir(llama_cpp).glob("libggml.so.*"), key=lambda p: len(p.name))
    ggml = ctypes.CDLL(str(sonames[0] if sonames else lib_dir(llama_cpp) / "libggml.so"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        from llama_cpp._utils import suppress_stdout_stderr

        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        with suppress_stdout_stderr(disable=False):  # ggml prints "load_backend: loaded ..." on stderr
            ggml.ggml_backend_load_all_from_path(str(lib_dir(llama_cpp)).encode())
    if ggml.ggml_backend_reg_count() == 0:
        raise MiLlmError(f"{lib_dir(llama_cpp)}: no llama.cpp CPU backend loads on this CPU")
    _loaded = True


# ---------------------------------------------------------------- identity of the build and CPU


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's /proc/cpuinfo fields (Linux; empty elsewhere), read once per process."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> list[str]:
    """The CPU's feature flags (empty where unknown)."""
    info = _cpuinfo()
    return sorted(set((info.get("flags") or info.get("Features") or "").split()))


def cpu_model() -> str:
    import platform

    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# The flags that decide which llama.cpp kernels run; the ones a crash report names.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "bmi2",
    "avx_vnni",
    "avx512f",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def simd_flags() -> str:
    have = set(cpu_flags())
    return " ".join(f for f in SIMD_FLAGS if f in have) or "unknown"


def build_fingerprint() -> dict[str, Any] | None:
    """llama-cpp-python's version and its native libraries (names, sizes, mtimes); None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")  # without importing it (that loads the library)
    if spec is None or not spec.origin:
        return None
    lib = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(spec.origin).parent / "lib")
    files = sorted(p for p in lib.glob("*.so*")) if lib.is_dir() else []
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("llama_cpp_python")
    except PackageNotFoundError:
        v = "unknown"
    return {"version": v, "lib": str(lib), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def probe_cache_path(fingerprint: dict[str, Any]) -> Path:
    from mi_llm.llm.home import mi_llm_home

    key = json.dumps({"build": fingerprint, "cpu": cpu_flags(), "model": cpu_model()}, sort_keys=True)
    return mi_llm_home() / "llamacpp-probe" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


# ---------------------------------------------------------------- the probe


@dataclass
class ProbeResult:
    ok: bool
    detail: str  # one line: what ran, or how it died
    system_info: str = ""
    seconds: float = 0.0


def _signal_name(returncode: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(-returncode).name
    return f"signal {-returncode}"


def probe_command(gguf: str | Path) -> list[str]:
    """The child process: this module's main() on `gguf`."""
    return [sys.executable, "-m", "mi_llm.llm.llamacpp_runtime", str(gguf)]


def run_probe(gguf: str | Path | None = None, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Decode a few tokens of the embedded GGUF (or `gguf`) in a child process; never raises."""
    if gguf is None:
        from mi_llm.llm.embedded import embedded_gguf

        gguf = embedded_gguf()
    cmd = probe_command(gguf)
    env = {**os.environ, SKIP_ENV: "1"}
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeResult(
            False,
            f"a test decode did not finish in {timeout:.0f} s (CPU flags: {simd_flags()})",
            seconds=time.monotonic() - t0,
        )
    took = time.monotonic() - t0
    if p.returncode < 0:
        return ProbeResult(
            False,
            f"llama.cpp died with {_signal_name(p.returncode)} in a test decode of {Path(gguf).name} "
            f"(CPU: {cpu_model()}; flags: {simd_flags()})",
            seconds=took,
        )
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        out = json.loads(last)
    except ValueError:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return ProbeResult(False, f"the llama.cpp test decode failed (exit {p.returncode}: {err})", seconds=took)
    if p.returncode != 0 or not out.get("ok"):
        return ProbeResult(
            False, f"the llama.cpp test decode failed: {out.get('error', f'exit {p.returncode}')}", seconds=took
        )
    return ProbeResult(True, f"decoded {out['tokens']} tokens", out.get("system_info", ""), took)


def probe(force: bool = False) -> ProbeResult:
    """The probe's result for this build and CPU: cached, or run now and cached."""
    fp = build_fingerprint()
    if fp is None:
        return ProbeResult(False, "llama-cpp-python is not installed")
    cache = probe_cache_path(fp)
    if not force:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            cached = json.loads(cache.read_text())
            return ProbeResult(**{k: cached[k] for k in ("ok", "detail", "system_info", "seconds")})
    log.info("checking the llama.cpp build on this CPU once (a test decode in a child process)")
    result = run_probe()
    # A timeout may be a busy machine, not a bad build: do not remember it.
    if result.ok or "died with" in result.detail:
        from mi_llm.io import write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {**asdict(result), "build": fp, "cpu_flags": simd_flags()})
    return result


def ensure_usable(explicit: bool) -> bool:
    """True when llama.cpp may be used here. A failed probe: exit 2 (explicit) or a warning and False."""
    if os.environ.get(SKIP_ENV) == "1":
        return True
    if build_fingerprint() is None:
        if explicit:
            import_llama_cpp(check=False)  # raises the install hint
        log.warning("llama-cpp-python is not installed: using the hf backend (pip install llama-cpp-python)")
        return False
    result = probe()
    if result.ok:
        return True
    if explicit:
        raise MiLlmError(
            f"llama.cpp is not usable on this machine: {result.detail}; use --backend hf, "
            "or rebuild llama-cpp-python with `make venv` (tools/llama_cpp/build.sh)"
        )
    log.warning("llama.cpp is not usable on this machine (%s): using the hf backend", result.detail)
    return False


# ---------------------------------------------------------------- the child


def _child(gguf: str) -> dict[str, Any]:
    llama_cpp = import_llama_cpp(check=False)  # this is the check
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        llm = llama_cpp.Llama(
            model_path=gguf, n_ctx=256, n_batch=64, n_threads=min(4, os.cpu_count() or 1), verbose=False, seed=1
        )
    # A prompt of several dozen tokens: the batched matrix products (where the AMX kernels
    # crashed) run on the prompt, single-token ones on the generated tokens.
    prompt = (
        "You are a counselor who uses motivational interviewing. The client says: I know I should "
        "walk more, but after work I am too tired and I just want to sit down. Counselor:"
    )
    out = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
    n = int(out["usage"]["completion_tokens"])
    if n < 1:
        return {"ok": False, "error": "no token generated"}
    return {
        "ok": True,
        "tokens": n,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mi_llm.llm.llamacpp_runtime GGUF", file=sys.stderr)
        return 2
    try:
        result = _child(args[0])
    except Exception as e:  # reported to the parent as one JSON line
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
