"""Benchmark test-set prediction: our backends vs single-stream llama.cpp, side by side.

Builds the demo experiment's test set (the bundled corpus, the split of
resources/demo.yaml), resolves the embedded gemma-3-270m, and generates a reply for every
test sample with each contender, greedy, the same prompts (token ids of our chat
template) and the same token budget:

  llama.cpp single    the peer: llama-cpp-python's `Llama.create_completion`, one sample
                      at a time, in test-set order (it reuses the KV cache of the prefix
                      shared with the previous prompt, as llama.cpp does on its own)
  ours llamacpp xN    our llamacpp backend with N parallel slots: continuous batching
                      in one llama.cpp context with prefix sharing across slots
  ours hf bB          our transformers backend, fp32, batches of B (length-sorted)

Throughput = generated tokens / generation wall time (model loading excluded, prompt
processing included), tokens counted without the end-of-turn marker. Also reported:
how many predictions are identical to the peer's (greedy on the same GGUF; batched
arithmetic may flip a near-tie).

    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_predict.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(stderr=True)


def demo_test_set(out: Path, limit: int | None) -> list[Any]:
    """The demo experiment's test samples (same sources and split as resources/demo.yaml)."""
    import yaml

    from mi_llm.build import build
    from mi_llm.resources import demo_files
    from mi_llm.samples import read_samples

    cfg = yaml.safe_load((REPO / "src" / "mi_llm" / "resources" / "demo.yaml").read_text())
    split = cfg["split"]
    style = cfg["sources"][0].get("style")
    build(demo_files(None, style), out, train=split["train"], test=split["test"], seed=split["seed"])
    samples = read_samples(out / "samples.test.jsonl")
    return samples[:limit] if limit else samples


def run_peer(gguf: Path, prompts: list[list[int]], max_new: int, threads: int, n_ctx: int) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False, seed=42)
    texts, tokens = [], 0
    t0 = time.perf_counter()
    for p in prompts:
        r = llm.create_completion(prompt=p, max_tokens=max_new, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                  repeat_penalty=1.0)
        texts.append(r["choices"][0]["text"].strip())
        tokens += r["usage"]["completion_tokens"]
    seconds = time.perf_counter() - t0
    llm.close()
    return {"texts": texts, "tokens": tokens, "seconds": seconds}


def run_ours(backend: Any, samples: list[Any], max_new: int, batch: int) -> dict[str, Any]:
    from mi_llm.llm.backends import preset

    cfg = preset("greedy", max_new_tokens=max_new)
    msgs = [s.messages() for s in samples]
    order = getattr(backend, "preferred_order", "length")
    idx = list(range(len(msgs)))
    if order == "length":
        idx.sort(key=lambda i: sum(len(m["content"]) for m in msgs[i]))
    texts: list[str] = [""] * len(msgs)
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        for i, c in zip(part, backend.generate([msgs[i] for i in part], cfg)):
            texts[i] = c.text
            tokens += c.completion_tokens
    seconds = time.perf_counter() - t0
    return {"texts": texts, "tokens": tokens, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the demo experiment's")
    ap.add_argument("--parallel", type=int, nargs="+", default=[8, 16], help="slot counts of our llamacpp backend")
    ap.add_argument("--hf-batch", type=int, default=16, help="batch size of the hf backend (0 = skip it)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import yaml

    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.models import encode_prompt, load_tokenizer, resolve_model

    demo = yaml.safe_load((REPO / "src" / "mi_llm" / "resources" / "demo.yaml").read_text())
    max_new = args.max_new_tokens or demo.get("generation", {}).get("max_new_tokens", 64)
    with tempfile.TemporaryDirectory() as tmp:
        samples = demo_test_set(Path(tmp) / "build", args.limit)
    rm = resolve_model("gemma-3-270m")
    tok = load_tokenizer(rm)
    prompts = [encode_prompt(tok, s.messages()) for s in samples]
    n_ctx = max(len(p) for p in prompts) + max_new + 16
    console.print(f"{len(samples)} test samples, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens "
                  f"(mean {sum(map(len, prompts)) / len(prompts):.0f}), max_new_tokens {max_new}, {args.threads} threads")

    rows: list[dict[str, Any]] = []
    console.print("llama.cpp single stream (peer) ...")
    peer = run_peer(rm.gguf, prompts, max_new, args.threads, n_ctx)
    rows.append({"name": "llama.cpp single stream (peer)", **peer})
    for n in args.parallel:
        console.print(f"ours: llamacpp --parallel {n} ...")
        with get_backend("llamacpp", rm, parallel=n, n_ctx=n_ctx, n_threads=args.threads) as be:
            rows.append({"name": f"ours: llamacpp --parallel {n}", **run_ours(be, samples, max_new, batch=len(samples))})
    if args.hf_batch:
        console.print(f"ours: hf --batch-size {args.hf_batch} ...")
        with get_backend("hf", rm, batch_size=args.hf_batch, device="cpu") as be:
            rows.append({"name": f"ours: hf fp32 --batch-size {args.hf_batch}", **run_ours(be, samples, max_new, args.hf_batch)})

    base_tps = peer["tokens"] / peer["seconds"]
    table = Table(title=f"test-set prediction, gemma-3-270m Q4_K_M, {len(samples)} samples, greedy, {max_new} new tokens max")
    for col in ("backend", "generated tokens", "seconds", "tokens/s", "vs peer", "same text as peer"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    results = []
    for r in rows:
        tps = r["tokens"] / r["seconds"]
        same = sum(a == b for a, b in zip(r["texts"], peer["texts"]))
        table.add_row(r["name"], str(r["tokens"]), f"{r['seconds']:.1f}", f"{tps:.1f}", f"{tps / base_tps:.2f}x",
                      f"{same}/{len(samples)}")
        results.append({"backend": r["name"], "tokens": r["tokens"], "seconds": round(r["seconds"], 2),
                        "tokens_per_s": round(tps, 2), "ratio": round(tps / base_tps, 3), "same_as_peer": same})
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "samples": len(samples), "max_new_tokens": max_new, "threads": args.threads,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "results": results,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
