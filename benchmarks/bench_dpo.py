"""Benchmark DPO throughput: `mi-llm train --method dpo` vs LLaMA-Factory's DPO, side by side, CPU.

Both train a fresh LoRA (r 8 / alpha 16 / dropout 0, all linear layers) on the embedded
gemma-3-270m with the sigmoid DPO loss (beta 0.1), lr 1e-4 cosine, warm-up 0.1, one pair per
micro-batch, gradient accumulation --grad-accum, for --steps optimizer steps, on exactly the
same pairs (steps x grad-accum, each seen once): by default pairs made from the demo
experiment's training rounds, chosen = the round's own reply, rejected = the reply of another
round in the same language (the speed does not depend on which reply is better; pass --pairs
for a `mi-llm prefs build` file). Pairs longer than --max-length are left out so that neither
engine truncates.

Measured: training time as each engine reports it, model loading excluded (ours: the
reference pass, computed once before the loop, + the loop's `seconds_this_run`; LLaMA-Factory:
`train_runtime`, which includes its reference forward passes, done per batch), tokens/s = tokens of chosen +
rejected sequences (our tokenizer and template) / time, and each process's peak RSS (os.wait4).

    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_dpo.py --steps 2 [--skip-llamafactory]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_train import default_lf_venv, demo_build, run_measured  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(stderr=True)


def bench_pairs(data: Path | None, pairs: Path | None, work: Path, n: int, max_length: int) -> dict[str, Any]:
    """`n` pairs that fit `max_length` into work/pairs.jsonl (+ LLaMA-Factory export); their tokens."""
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.prefs.pairs import PreferencePair, ScoredReply, read_pairs, write_llamafactory_pairs, write_pairs
    from mi_llm.train.data import load_train_data
    from mi_llm.train.preference import encode_pair

    if pairs is not None:
        candidates = read_pairs(pairs)
    else:
        samples = load_train_data(data or demo_build(work / "demo")).samples
        candidates = []
        for i, s in enumerate(samples):
            other = next((t for t in samples[i + 1 :] + samples[:i] if t.language == s.language), None)
            if other is None or other.response == s.response:
                continue
            candidates.append(
                PreferencePair.of_sample(s, ScoredReply(text=s.response), ScoredReply(text=other.response))
            )
    tok = load_tokenizer(resolve_model("gemma-3-270m"))
    kept, tokens = [], 0
    for p in candidates:
        ex = encode_pair(p, tok, 10**9)
        if max(len(ex.chosen), len(ex.rejected)) > max_length:
            continue
        kept.append(p)
        tokens += len(ex)
        if len(kept) == n:
            break
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} pairs fit {max_length} tokens; need {n}")
    write_pairs(work / "pairs.jsonl", kept)
    write_llamafactory_pairs(work / "pairs-lf", kept)
    return {"pairs": n, "tokens": tokens, "mean_tokens": tokens / n}


def run_ours(work: Path, steps: int, ga: int, max_length: int) -> dict[str, Any]:
    out = work / "ours"
    cmd = [str(Path(sys.executable).with_name("mi-llm")), "train", "--method", "dpo", "--model", "gemma-3-270m"]
    cmd += ["--data", str(work / "pairs.jsonl"), "--output", str(out), "--max-steps", str(steps)]
    cmd += ["--grad-accum", str(ga), "--max-length", str(max_length), "--save-steps", "1000000"]
    m = run_measured(cmd, out.with_suffix(".log"))
    res = json.loads((out / "train_config.json").read_text())["result"]
    # the reference pass runs before the loop: counted in, as LLaMA-Factory's is in its runtime
    train_s = res["seconds_this_run"] + res["reference_seconds"]
    return {**m, "train_s": train_s, "reference_s": res["reference_seconds"], "final_loss": res["final_loss"]}


def run_llamafactory(lf_venv: Path, work: Path, steps: int, ga: int, max_length: int) -> dict[str, Any]:
    import yaml

    from mi_llm.llm.resolve import resolve_model

    cli = lf_venv / "bin" / "llamafactory-cli"
    if not cli.is_file():
        raise SystemExit(f"{cli} missing: run `bash benchmarks/setup_llamafactory.sh` first")
    out = work / "llamafactory"
    c = {
        "model_name_or_path": str(resolve_model("gemma-3-270m").path),
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "pref_beta": 0.1,
        "pref_loss": "sigmoid",
        "dataset": "mi_prefs",
        "dataset_dir": str(work / "pairs-lf"),
        "template": "gemma",
        "cutoff_len": max_length,
        "overwrite_cache": True,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": ga,
        "learning_rate": 1e-4,
        "num_train_epochs": 1,
        "max_steps": steps,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "use_cpu": True,
        "bf16": False,
        "plot_loss": False,
    }
    yml = work / "llamafactory.yaml"
    yml.write_text(yaml.safe_dump(c, sort_keys=False))
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    m = run_measured([str(cli), "train", str(yml)], work / "llamafactory.log", env=env)
    res = json.loads((out / "train_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return {**m, "train_s": res["train_runtime"], "final_loss": losses[-1] if losses else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="build folder or samples.train.jsonl (default: the demo experiment's)")
    ap.add_argument("--pairs", type=Path, help="a pairs file from `mi-llm prefs build` instead of made-up pairs")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lf-venv", type=Path, default=None)
    ap.add_argument("--skip-llamafactory", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args(argv)

    from mi_llm.llm.resolve import resolve_model

    resolve_model("gemma-3-270m")  # converts once, before anything is timed
    n = a.steps * a.grad_accum
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sub = bench_pairs(a.data, a.pairs, work, n, a.max_length)
        console.print(f"{n} pairs, {sub['tokens']:,} tokens of chosen + rejected (mean {sub['mean_tokens']:.0f})")
        ours = run_ours(work, a.steps, a.grad_accum, a.max_length)
        ours["tokens_per_s"] = sub["tokens"] / ours["train_s"]
        ref = json.loads((work / "ours" / "train_config.json").read_text())
        ours["shared_prompt_tokens"] = ref["data"]["shared_prompt_tokens"]
        lf = None
        if not a.skip_llamafactory:
            lf = run_llamafactory(a.lf_venv or default_lf_venv(), work, a.steps, a.grad_accum, a.max_length)
            lf["tokens_per_s"] = sub["tokens"] / lf["train_s"]
    results = {
        "machine": f"{os.cpu_count()} CPU cores",
        "steps": a.steps,
        "grad_accum": a.grad_accum,
        "max_length": a.max_length,
        "pairs": sub,
        "ours": ours,
        "llamafactory": lf,
        "ratio": (ours["tokens_per_s"] / lf["tokens_per_s"]) if lf else None,
    }
    t = Table(title=f"DPO, gemma-3-270m, CPU: {n} pairs ({sub['tokens']:,} tokens), {a.steps} steps x {a.grad_accum}")
    for col in ("engine", "train time (s)", "tokens/s", "pairs/s", "peak RSS (MB)", "final loss"):
        t.add_column(col, justify="right" if col != "engine" else "left")
    for name, r in (("mi-llm", ours), ("LLaMA-Factory", lf)):
        if r:
            t.add_row(
                name,
                f"{r['train_s']:.1f}",
                f"{r['tokens_per_s']:.1f}",
                f"{n / r['train_s']:.3f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-",
            )
    console.print(t)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
