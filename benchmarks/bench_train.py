"""Benchmark LoRA training throughput: `mi-llm train` vs LLaMA-Factory, side by side, CPU.

Both train the embedded gemma-3-270m (the same safetensors folder) on exactly the same
samples (the demo experiment's training split, or --data), with the same hyper-parameters
(LoRA r 8 / alpha 16 / dropout 0 on all linear layers, lr 1e-4 cosine, warm-up 0.1,
batch 1, gradient accumulation 8, cut-off --max-length), for --steps optimizer steps:
steps x grad-accum samples, each seen once. Samples longer than --max-length are left out
so that neither engine truncates and both see the same tokens.

Measured: the training loop's wall time as each engine reports it (model loading and
data preprocessing excluded: LLaMA-Factory's `train_runtime`, our `seconds_this_run`),
trained tokens/s = tokens of those samples (our tokenizer and chat template) / time, and
the peak RSS of each training process (os.wait4). Targets: ours >= 2x LLaMA-Factory's
tokens/s, our peak RSS <= 3 GB.

    bash benchmarks/setup_llamafactory.sh        # once: LLaMA-Factory's own venv
    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_train.py --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
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
TARGET_RATIO = 2.0
TARGET_RSS_MB = 3 * 1024


def default_lf_venv() -> Path:
    from mi_llm.llm.home import mi_llm_home

    return Path(os.environ.get("LF_VENV") or mi_llm_home() / "bench" / "lf-venv")


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; its exit status, wall time and peak RSS (of that process alone)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}); log {log}:\n{tail}")
    return {"wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024}


def demo_build(out: Path) -> Path:
    import yaml

    from mi_llm.build.stage import build
    from mi_llm.resources import demo_files

    cfg = yaml.safe_load((REPO / "src" / "mi_llm" / "resources" / "demo.yaml").read_text())
    split = cfg["split"]
    build(
        demo_files(None, cfg["sources"][0].get("style")),
        out,
        train=split["train"],
        test=split["test"],
        seed=split["seed"],
    )
    return out


def bench_subset(data: Path, out: Path, n: int, max_length: int, seed: int) -> dict[str, Any]:
    """A build folder with `n` samples that fit `max_length` (seeded pick), and their tokens."""
    from mi_llm.build.exports import export_records, write_llamafactory
    from mi_llm.io import write_jsonl
    from mi_llm.llm.load import load_tokenizer
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.data import encode_sample, load_train_data

    samples = load_train_data(data).samples
    tok = load_tokenizer(resolve_model("gemma-3-270m"))
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    chosen, tokens, targets = [], 0, 0
    for i in order:
        s = samples[i]
        ex = encode_sample(s, tok, 10**9, last_only=True)
        if len(ex) > max_length:
            continue
        chosen.append(s)
        tokens += len(ex)
        targets += ex.n_targets
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} samples of {data} fit {max_length} tokens; need {n}")
    write_jsonl(out / "samples.train.jsonl", chosen)
    write_llamafactory(out / "llamafactory", {"train": export_records(chosen, "rounds")}, "rounds")
    return {
        "samples": n,
        "tokens": tokens,
        "target_tokens": targets,
        "mean_tokens": tokens / n,
        "mean_target_tokens": targets / n,
    }


def run_ours(sub: Path, out: Path, steps: int, ga: int, max_length: int) -> dict[str, Any]:
    cmd = [
        str(Path(sys.executable).with_name("mi-llm")),
        "train",
        "--model",
        "gemma-3-270m",
        "--data",
        str(sub),
        "--output",
        str(out),
        "--max-steps",
        str(steps),
        "--grad-accum",
        str(ga),
        "--max-length",
        str(max_length),
        "--epochs",
        "1",
        "--save-steps",
        "1000000",
    ]
    m = run_measured(cmd, out.with_suffix(".log"))
    res = json.loads((out / "train_config.json").read_text())["result"]
    return {
        **m,
        "train_s": res["seconds_this_run"],
        "tokens": res["tokens"],
        "target_tokens": res["target_tokens"],
        "final_loss": res["final_loss"],
        "self_peak_rss_mb": res["peak_rss_mb"],
    }


def run_llamafactory(lf_venv: Path, sub: Path, out: Path, steps: int, ga: int, max_length: int) -> dict[str, Any]:
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.config import TrainConfig
    from mi_llm.train.data import load_train_data
    from mi_llm.train.llamafactory import write_llamafactory_yaml

    cli = lf_venv / "bin" / "llamafactory-cli"
    if not cli.is_file():
        raise SystemExit(f"{cli} missing: run `bash benchmarks/setup_llamafactory.sh` first")
    cfg = TrainConfig(
        model="gemma-3-270m",
        data=str(sub),
        output=str(out),
        max_steps=steps,
        grad_accum=ga,
        max_length=max_length,
        epochs=1,
    )
    yml = out.with_suffix(".yaml")
    write_llamafactory_yaml(
        yml,
        cfg,
        resolve_model("gemma-3-270m"),
        load_train_data(sub),
        gpu=False,
        output_dir=str(out),
        extra={"save_strategy": "no", "plot_loss": False, "include_num_input_tokens_seen": True},
    )
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    m = run_measured([str(cli), "train", str(yml)], out.with_suffix(".log"), env=env)
    res = json.loads((out / "train_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    seen = [h.get("num_input_tokens_seen") for h in state.get("log_history", []) if "num_input_tokens_seen" in h]
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return {
        **m,
        "train_s": res["train_runtime"],
        "tokens_seen": seen[-1] if seen else None,
        "final_loss": losses[-1] if losses else None,
        "steps": state.get("global_step"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="build folder or samples.train.jsonl (default: the demo experiment's)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per engine")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lf-venv", type=Path, default=None)
    ap.add_argument("--skip-llamafactory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary folder)")
    a = ap.parse_args(argv)

    from mi_llm.llm.resolve import resolve_model

    rm = resolve_model("gemma-3-270m")  # converts once, before anything is timed
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = a.data or demo_build(work / "demo")
        n = a.steps * a.grad_accum
        sub = bench_subset(data, work / "subset", n, a.max_length, a.seed)
        console.print(
            f"{n} samples, {sub['tokens']:,} tokens (mean {sub['mean_tokens']:.0f}, "
            f"target {sub['mean_target_tokens']:.0f}); model {rm.path}"
        )
        ours = run_ours(work / "subset", work / "ours", a.steps, a.grad_accum, a.max_length)
        ours["tokens_per_s"] = sub["tokens"] / ours["train_s"]
        lf = None
        if not a.skip_llamafactory:
            lf = run_llamafactory(
                a.lf_venv or default_lf_venv(),
                work / "subset",
                work / "llamafactory",
                a.steps,
                a.grad_accum,
                a.max_length,
            )
            lf["tokens_per_s"] = sub["tokens"] / lf["train_s"]

    results = {
        "machine": f"{os.cpu_count()} CPU cores",
        "model": "gemma-3-270m",
        "data": str(a.data or "demo train split"),
        "steps": a.steps,
        "grad_accum": a.grad_accum,
        "max_length": a.max_length,
        "subset": sub,
        "ours": ours,
        "llamafactory": lf,
        "ratio": (ours["tokens_per_s"] / lf["tokens_per_s"]) if lf else None,
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
    }
    t = Table(
        title=f"LoRA training, gemma-3-270m, CPU: {n} samples ({sub['tokens']:,} tokens), "
        f"{a.steps} steps x {a.grad_accum}"
    )
    for col in ("engine", "train time (s)", "tokens/s", "samples/s", "peak RSS (MB)", "final loss"):
        t.add_column(col, justify="right" if col != "engine" else "left")
    for name, r in (("mi-llm", ours), ("LLaMA-Factory 0.9.5", lf)):
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
    if lf:
        ok = "meets" if results["ratio"] >= TARGET_RATIO else "MISSES"
        console.print(f"ratio {results['ratio']:.2f}x ({ok} the {TARGET_RATIO:.0f}x target)")
        if lf.get("tokens_seen"):
            console.print(f"LLaMA-Factory counted {lf['tokens_seen']:,} input tokens (ours: {sub['tokens']:,})")
    ok = "meets" if ours["peak_rss_mb"] <= TARGET_RSS_MB else "MISSES"
    console.print(f"our peak RSS {ours['peak_rss_mb']:,.0f} MB ({ok} the {TARGET_RSS_MB:,} MB target)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
