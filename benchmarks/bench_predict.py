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
  ours hf bB          our transformers backend, fp32, batches of B (length-sorted);
                      only with --hf-batch B (it is the slowest on a CPU)

Throughput = generated tokens / generation wall time (model loading excluded, prompt
processing included), tokens counted without the end-of-turn marker. The contenders
take turns on groups of whole dialogues (`--rounds`), so a change of load on a shared
machine hits them alike. Also reported:
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

    from mi_llm.build.samples import read_samples
    from mi_llm.build.stage import build
    from mi_llm.resources import demo_files

    cfg = yaml.safe_load((REPO / "src" / "mi_llm" / "resources" / "demo.yaml").read_text())
    split = cfg["split"]
    style = cfg["sources"][0].get("style")
    build(demo_files(None, style), out, train=split["train"], test=split["test"], seed=split["seed"])
    samples = read_samples(out / "samples.test.jsonl")
    return samples[:limit] if limit else samples


class Peer:
    """llama-cpp-python as users call it: `create_completion`, one prompt at a time."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int):
        from mi_llm.llm.llamacpp_runtime import import_llama_cpp

        llama_cpp = import_llama_cpp()  # a runtime-dispatch build loads its CPU backend first

        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
            seed=42,
        )

    def run(self, prompts: list[list[int]], max_new: int) -> tuple[list[str], int]:
        texts, tokens = [], 0
        for p in prompts:
            r = self.llm.create_completion(
                prompt=p, max_tokens=max_new, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0
            )
            texts.append(r["choices"][0]["text"].strip())
            tokens += r["usage"]["completion_tokens"]
        return texts, tokens

    def close(self) -> None:
        self.llm.close()


class Ours:
    def __init__(self, backend: Any, batch: int):
        self.backend, self.batch = backend, batch

    def run(self, msgs: list[Any], max_new: int) -> tuple[list[str], int]:
        from mi_llm.llm.backends import preset

        cfg = preset("greedy", max_new_tokens=max_new)
        idx = list(range(len(msgs)))
        if getattr(self.backend, "preferred_order", "length") == "length":
            idx.sort(key=lambda i: sum(len(m["content"]) for m in msgs[i]))
        texts, tokens = [""] * len(msgs), 0
        for start in range(0, len(idx), self.batch):
            part = idx[start : start + self.batch]
            for i, c in zip(part, self.backend.generate([msgs[i] for i in part], cfg)):
                texts[i] = c.text
                tokens += c.completion_tokens
        return texts, tokens

    def close(self) -> None:
        self.backend.close()


def chunks_by_dialogue(samples: list[Any], n: int) -> list[list[int]]:
    """Sample indices in `n` groups of whole dialogues (test-set order kept)."""
    dialogues: list[str] = []
    for s in samples:
        if s.dialogue_id not in dialogues:
            dialogues.append(s.dialogue_id)
    size = -(-len(dialogues) // n)
    groups = [set(dialogues[i : i + size]) for i in range(0, len(dialogues), size)]
    return [[i for i, s in enumerate(samples) if s.dialogue_id in g] for g in groups]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the demo experiment's")
    ap.add_argument("--parallel", type=int, nargs="+", default=[8, 16], help="slot counts of our llamacpp backend")
    ap.add_argument(
        "--hf-batch", type=int, default=0, help="also run the hf backend with this batch size (0 = skip it)"
    )
    ap.add_argument("--rounds", type=int, default=4, help="groups of dialogues the contenders take turns on")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import yaml

    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.llm.templates import encode_prompt

    demo = yaml.safe_load((REPO / "src" / "mi_llm" / "resources" / "demo.yaml").read_text())
    max_new = args.max_new_tokens or demo.get("generation", {}).get("max_new_tokens", 64)
    with tempfile.TemporaryDirectory() as tmp:
        samples = demo_test_set(Path(tmp) / "build", args.limit)
    rm = resolve_model("gemma-3-270m")
    tok = load_tokenizer(rm)
    prompts = [encode_prompt(tok, s.messages()) for s in samples]
    n_ctx = max(len(p) for p in prompts) + max_new + 16
    console.print(
        f"{len(samples)} test samples, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens "
        f"(mean {sum(map(len, prompts)) / len(prompts):.0f}), max_new_tokens {max_new}, {args.threads} threads"
    )

    contenders: list[tuple[str, Any]] = [("llama.cpp single stream (peer)", Peer(rm.gguf, args.threads, n_ctx))]
    for n in args.parallel:
        be = get_backend("llamacpp", rm, parallel=n, n_ctx=n_ctx, n_threads=args.threads)
        contenders.append((f"ours: llamacpp --parallel {n}", Ours(be, batch=len(samples))))
    if args.hf_batch:
        be = get_backend("hf", rm, batch_size=args.hf_batch, device="cpu")
        contenders.append((f"ours: hf fp32 --batch-size {args.hf_batch}", Ours(be, batch=args.hf_batch)))
    # Interleaved by groups of dialogues, so that a load change on this shared machine
    # hits every contender alike.
    rows = [{"name": name, "texts": [""] * len(samples), "tokens": 0, "seconds": 0.0} for name, _ in contenders]
    for g, group in enumerate(chunks_by_dialogue(samples, args.rounds)):
        for row, (name, c) in zip(rows, contenders):
            console.print(f"group {g + 1}/{args.rounds} ({len(group)} samples): {name}")
            data = [prompts[i] for i in group] if isinstance(c, Peer) else [samples[i].messages() for i in group]
            t0 = time.perf_counter()
            texts, tokens = c.run(data, max_new)
            row["seconds"] += time.perf_counter() - t0
            row["tokens"] += tokens
            for i, t in zip(group, texts):
                row["texts"][i] = t
    for _, c in contenders:
        c.close()
    peer = rows[0]

    base_tps = peer["tokens"] / peer["seconds"]
    table = Table(
        title=f"test-set prediction, gemma-3-270m Q4_K_M, {len(samples)} samples, greedy, {max_new} new tokens max"
    )
    for col in ("backend", "generated tokens", "seconds", "tokens/s", "vs peer", "same text as peer"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    results = []
    for r in rows:
        tps = r["tokens"] / r["seconds"]
        same = sum(a == b for a, b in zip(r["texts"], peer["texts"]))
        table.add_row(
            r["name"],
            str(r["tokens"]),
            f"{r['seconds']:.1f}",
            f"{tps:.1f}",
            f"{tps / base_tps:.2f}x",
            f"{same}/{len(samples)}",
        )
        results.append(
            {
                "backend": r["name"],
                "tokens": r["tokens"],
                "seconds": round(r["seconds"], 2),
                "tokens_per_s": round(tps, 2),
                "ratio": round(tps / base_tps, 3),
                "same_as_peer": same,
            }
        )
    Console().print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "samples": len(samples),
                    "max_new_tokens": max_new,
                    "threads": args.threads,
                    "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
