"""fp32 vs bf16 on this CPU, side by side in one process: what `--precision auto` decides on.

1. matrix products at the embedded model's LoRA shapes (512x640 @ 640x2048), fp32 vs bf16;
2. a 640-2048-640 MLP forward + backward, fp32 vs under bf16 autocast (fp32 weights);
3. with `--train N` (N >= 1): training micro-steps of the real embedded gemma-3-270m on N demo
   samples (forward + backward through mi-llm's selective loss, batch 1), fp32 vs bf16 as
   `mi-llm train --precision bf16` runs them (bf16 base, autocast, fp32 LoRA weights), with
   each sample's loss in both.

Every measurement alternates fp32 and bf16 (order swapped each round) and reports the median
of --rounds rounds and the min-max spread of the speed-up, with the CPU's flags.

    .venv/bin/python benchmarks/bench_precision.py [--rounds 3] [--train 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


def timed(fn: Callable[[], Any], n: int) -> float:
    """The median of n calls: robust to a descheduled call on a shared machine."""
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def side_by_side(fp32: Callable[[], Any], bf16: Callable[[], Any], rounds: int, n: int) -> dict[str, Any]:
    fp32(), bf16()  # warm-up, once each (kernel selection, allocations)
    a, b = [], []
    for r in range(rounds):
        pair = [(a, fp32), (b, bf16)] if r % 2 == 0 else [(b, bf16), (a, fp32)]
        for sink, fn in pair:
            sink.append(timed(fn, n))
    speedups = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "fp32_s": a,
        "bf16_s": b,
        "speedup_median": statistics.median(speedups),
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
    }


def kernels(rounds: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    x, w = torch.randn(512, 640), torch.randn(640, 2048)
    xb, wb = x.bfloat16(), w.bfloat16()
    mm = side_by_side(lambda: x @ w, lambda: xb @ wb, rounds, 20)
    up, down = torch.nn.Linear(640, 2048), torch.nn.Linear(2048, 640)
    h = torch.randn(512, 640, requires_grad=True)

    def mlp(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = down(torch.nn.functional.gelu(up(h)))
        y.float().sum().backward()

    return {"matmul_512x640x2048": mm, "mlp_fwd_bwd": side_by_side(lambda: mlp(False), lambda: mlp(True), rounds, 10)}


def training(n_samples: int, rounds: int, work: Path) -> dict[str, Any]:
    import torch
    from bench_train import bench_subset, demo_build

    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.adapter import load_peft_model
    from mi_llm.train.config import TrainConfig
    from mi_llm.train.data import collate, encode_samples, load_train_data
    from mi_llm.train.loss import SelectiveLMLoss

    data = demo_build(work / "demo")
    sub = bench_subset(data, work / "subset", n_samples, 512, 0)
    rm = resolve_model("gemma-3-270m")
    tok = load_tokenizer(rm)
    examples, _ = encode_samples(load_train_data(work / "subset").samples, tok, 512, "rounds")
    cfg = TrainConfig(data=str(work / "subset"), output=str(work / "unused"))
    models = {
        "fp32": SelectiveLMLoss(load_peft_model(cfg, rm, torch.float32), 0),
        "bf16": SelectiveLMLoss(load_peft_model(cfg, rm, torch.bfloat16), 0),
    }
    losses: dict[str, list[float]] = {}

    def run(name: str) -> None:
        out = []
        for e in examples:
            batch = collate([e], tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                loss_sum, n = models[name](batch["input_ids"], batch["labels"], batch["attention_mask"])
            loss_sum.backward()
            out.append(float(loss_sum.detach()) / float(n))
        for p in models[name].parameters():
            p.grad = None
        losses[name] = out

    res = side_by_side(lambda: run("fp32"), lambda: run("bf16"), rounds, 1)
    rel = [abs(b - a) / a for a, b in zip(losses["fp32"], losses["bf16"], strict=True)]
    return {**res, "samples": n_samples, "tokens": sub["tokens"], "loss_rel_diff_max": max(rel), "losses": losses}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=0, help="also time training micro-steps on N demo samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    import os
    import tempfile

    import torch

    from mi_llm.train.precision import cpu_description, resolve_precision

    torch.set_num_threads(a.threads)
    res: dict[str, Any] = {
        "cpu": cpu_description(),
        "auto": resolve_precision("auto", cuda=False),
        "torch": torch.__version__,
        "threads": a.threads,
        "load_average_before": os.getloadavg(),
        **kernels(a.rounds),
    }
    if a.train:
        with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
            res["training_micro_steps"] = training(a.train, a.rounds, Path(tmp))
    res["load_average_after"] = os.getloadavg()
    cpu = res["cpu"]
    print(f"CPU {cpu['cpu']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}; auto = {res['auto']}")
    for k in ("matmul_512x640x2048", "mlp_fwd_bwd", "training_micro_steps"):
        if k in res:
            r = res[k]
            print(
                f"{k}: fp32 {statistics.median(r['fp32_s']) * 1e3:.1f} ms, bf16 {statistics.median(r['bf16_s']) * 1e3:.1f} ms"
                f" -> bf16 {r['speedup_median']:.2f}x (min {r['speedup_min']:.2f}, max {r['speedup_max']:.2f})"
            )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
