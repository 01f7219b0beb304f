"""Benchmark llama.cpp builds side by side: mi-llm's portable build vs a native one.

`make venv` builds llama-cpp-python with runtime CPU dispatch (tools/llama_cpp/build.sh): no
-march=native, one CPU backend per x86-64 level, the AMX level left out. This measures what
that costs against a build compiled for this very CPU (`-DGGML_NATIVE=ON`, llama-cpp-python's
default), on the embedded gemma-3-270m Q4_K_M GGUF, same settings for both:

  prompt   tokens/s evaluating a ~230-token prompt (batched matrix products)
  gen      tokens/s generating 64 tokens greedily after it (one token at a time)

Each build runs in its own child process (LLAMA_CPP_LIB_PATH picks its libraries; the Python
package is the same), the builds take turns, `--repeats` times, and the medians are reported
with every run's figure, so a change of load on a shared machine hits both alike.

A native build to compare with (its libraries only):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip wheel --no-deps --no-cache-dir llama-cpp-python==0.3.36 -w /tmp/w
    unzip -o /tmp/w/llama_cpp_python-*.whl 'llama_cpp/lib/*' -d /tmp/native
    .venv/bin/python benchmarks/bench_llamacpp_build.py --lib native=/tmp/native/llama_cpp/lib
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PROMPT = (
    "You are a counselor who uses motivational interviewing: reflect what the client says, ask open "
    "questions, support autonomy. "
) * 4 + (
    "Client: I have smoked for twenty years. My doctor says my lungs are getting worse and my daughter "
    "keeps asking me to quit, but every time I try I get irritable and I start again within a week. "
    "I do not know if it is worth trying again. Counselor:"
)


def child(gguf: str, n_gen: int, threads: int) -> dict:
    """Runs in the child: one build, one measurement."""
    from mi_llm.llm.llamacpp_runtime import import_llama_cpp

    llama_cpp = import_llama_cpp(check=False)  # the parent reports a crash of this child
    llm = llama_cpp.Llama(
        model_path=gguf, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False, seed=1
    )
    tokens = llm.tokenize(PROMPT.encode())
    llm.eval(tokens[:8])  # warm-up: first-use allocations and repacking
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    t_prompt = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated = 0
    for tok in llm.generate([], temp=0.0, reset=False):
        generated += 1
        if generated >= n_gen or tok == llm.token_eos():
            break
    t_gen = time.perf_counter() - t0
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = [f.split("=")[0].strip() for f in info.split("|") if f.strip().endswith("= 1")]
    return {
        "prompt_tokens": len(tokens),
        "prompt_tps": len(tokens) / t_prompt,
        "gen_tokens": generated,
        "gen_tps": generated / t_gen,
        "features": features,
    }


def run_one(lib: str | None, gguf: str, n_gen: int, threads: int) -> dict:
    env = dict(os.environ)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    else:
        env.pop("LLAMA_CPP_LIB_PATH", None)
    p = subprocess.run(
        [sys.executable, __file__, "--child", gguf, "--gen", str(n_gen), "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if p.returncode != 0:
        raise SystemExit(f"build {lib or 'installed'}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lib",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a build's llama_cpp/lib folder to compare (repeatable); the installed build is always in",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--child", metavar="GGUF", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.gen, a.threads)))
        return 0
    from mi_llm.llm.embedded import embedded_gguf
    from mi_llm.llm.llamacpp_runtime import cpu_model, simd_flags

    builds: dict[str, str | None] = {"mi-llm (installed)": None}
    for spec in a.lib:
        name, _, path = spec.partition("=")
        if not path or not Path(path, "libllama.so").is_file():
            raise SystemExit(f"--lib {spec}: expected NAME=DIR with DIR/libllama.so")
        builds[name] = path
    gguf = str(embedded_gguf())
    runs: dict[str, list[dict]] = {name: [] for name in builds}
    for r in range(a.repeats):  # interleaved: each repeat runs every build once
        for name, lib in builds.items():
            m = run_one(lib, gguf, a.gen, a.threads)
            runs[name].append(m)
            print(
                f"repeat {r + 1}/{a.repeats} {name}: prompt {m['prompt_tps']:.1f} tok/s, gen {m['gen_tps']:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\nCPU: {cpu_model()} ({os.cpu_count()} cores; flags: {simd_flags()}); {a.threads} threads; "
        f"{a.repeats} interleaved repeats; embedded gemma-3-270m Q4_K_M\n"
    )
    print("| build | kernels in use | prompt tokens/s (median; runs) | generation tokens/s (median; runs) |")
    print("|---|---|---|---|")
    for name, ms in runs.items():
        feats = " ".join(f for f in ms[0]["features"] if f.startswith(("AVX", "AMX", "FMA", "F16C", "BMI2", "SSE")))
        pp = [m["prompt_tps"] for m in ms]
        tg = [m["gen_tps"] for m in ms]
        print(
            f"| {name} | {feats} | **{statistics.median(pp):.1f}** ({', '.join(f'{x:.0f}' for x in pp)}) "
            f"| **{statistics.median(tg):.1f}** ({', '.join(f'{x:.1f}' for x in tg)}) |"
        )
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_model(), "flags": simd_flags(), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
