"""Benchmark LoRA training throughput: `mi-llm train` vs LLaMA-Factory, side by side, CPU.

Both train the embedded gemma-3-270m (the same safetensors folder) on exactly the same
samples (the demo experiment's training split, or --data), with the same hyper-parameters
(LoRA r 8 / alpha 16 / dropout 0 on all linear layers, lr 1e-4 cosine, warm-up 0.1,
batch 1, gradient accumulation 8, cut-off --max-length), for --steps optimizer steps:
steps x grad-accum samples, each seen once. Samples longer than --max-length are left out
so that neither engine truncates and both see the same tokens.

Fair by construction: both engines at the same precision (--precision fp32 and/or bf16:
bf16 autocast with fp32 LoRA weights for both), LLaMA-Factory with its gradient
checkpointing on (its default) and off (ours has none by default), and the engines
interleaved in --pairs rounds (the order rotates each round), so a slow minute on a shared
machine hits every engine. Reported: each run's training-loop time as the engine reports it
(model loading and preprocessing excluded: LLaMA-Factory's `train_runtime`, our
`seconds_this_run`), tokens/s by each engine's own token count (ours: our tokenizer and chat
template; LLaMA-Factory: `num_input_tokens_seen`), the peak RSS of each training process
(os.wait4), per LLaMA-Factory setting and precision the median speed ratio (its time / ours
on the same samples) with its min-max spread, and the CPU (model, cores, flags such as
avx512_bf16 and amx_bf16). Target: ours >= 3x LLaMA-Factory like for like (issue 21);
our peak RSS <= 3 GB in fp32.

    bash benchmarks/setup_llamafactory.sh        # once: LLaMA-Factory's own venv
    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_train.py --steps 2 --pairs 3 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mi_llm.train.compiled import CompileMode  # noqa: E402

console = Console(stderr=True)
TARGET_RATIO = 3.0
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


def run_ours(
    sub: Path, out: Path, steps: int, ga: int, max_length: int, precision: str, compile_mode: str
) -> dict[str, Any]:
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
        "--precision",
        precision,
        "--compile",
        compile_mode,
    ]
    m = run_measured(cmd, out.with_suffix(".log"))
    conf = json.loads((out / "train_config.json").read_text())
    res = conf["result"]
    if conf["runtime"]["precision"] != precision:
        raise SystemExit(f"{out}: ran in {conf['runtime']['precision']}, asked for {precision}")
    return {
        **m,
        "train_s": res["seconds_this_run"],
        "own_tokens": res["tokens"],
        "target_tokens": res["target_tokens"],
        "final_loss": res["final_loss"],
        "compiled_layers": conf["runtime"].get("compiled_layers", 0),
        "self_peak_rss_mb": res["peak_rss_mb"],
    }


def run_llamafactory(
    lf_venv: Path, sub: Path, out: Path, steps: int, ga: int, max_length: int, precision: str, checkpointing: bool
) -> dict[str, Any]:
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.config import TrainConfig
    from mi_llm.train.data import load_train_data
    from mi_llm.train.llamafactory import write_llamafactory_yaml

    cli = lf_venv / "bin" / "llamafactory-cli"
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
        bf16=precision == "bf16",  # CPU autocast, fp32 LoRA weights (LLaMA-Factory's upcast_trainable_params)
        extra={
            "save_strategy": "no",
            "plot_loss": False,
            "include_num_input_tokens_seen": True,
            "disable_gradient_checkpointing": not checkpointing,
        },
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
        "own_tokens": seen[-1] if seen else None,
        "final_loss": losses[-1] if losses else None,
        "steps": state.get("global_step"),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="build folder or samples.train.jsonl (default: the demo experiment's)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per engine")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=3, help="rounds of interleaved runs (at least 3 for a spread)")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or both (fp32,bf16); the same for both engines")
    ap.add_argument(
        "--lf-checkpointing",
        default="off,on",
        help="LLaMA-Factory gradient checkpointing settings to run: off, on (its default) or off,on",
    )
    ap.add_argument(
        "--compile",
        default="auto",
        choices=list(get_args(CompileMode)),
        help="ours: `mi-llm train --compile` (auto compiles runs of >= 40,000 planned tokens; the "
        "first step's compile counts in our time)",
    )
    ap.add_argument("--lf-venv", type=Path, default=None)
    ap.add_argument("--skip-llamafactory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary folder)")
    a = ap.parse_args(argv)
    precisions = [p.strip() for p in a.precision.split(",") if p.strip()]
    checkpointing = [c.strip() for c in a.lf_checkpointing.split(",") if c.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        ap.error("--precision: fp32, bf16 or fp32,bf16")
    if not checkpointing or set(checkpointing) - {"off", "on"}:
        ap.error("--lf-checkpointing: off, on or off,on")
    if a.pairs < 1:
        ap.error("--pairs must be at least 1")
    lf_venv = a.lf_venv or default_lf_venv()
    if not a.skip_llamafactory and not (lf_venv / "bin" / "llamafactory-cli").is_file():
        raise SystemExit(f"{lf_venv}/bin/llamafactory-cli missing: run `bash benchmarks/setup_llamafactory.sh` first")

    from mi_llm.llm.resolve import resolve_model
    from mi_llm.train.precision import cpu_description

    cpu = cpu_description()
    rm = resolve_model("gemma-3-270m")  # converts once, before anything is timed
    engines = [("mi-llm", None)] + (
        [] if a.skip_llamafactory else [(f"LLaMA-Factory ckpt {c}", c) for c in checkpointing]
    )
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = a.data or demo_build(work / "demo")
        n = a.steps * a.grad_accum
        sub = bench_subset(data, work / "subset", n, a.max_length, a.seed)
        console.print(
            f"{n} samples, {sub['tokens']:,} tokens (mean {sub['mean_tokens']:.0f}, "
            f"target {sub['mean_target_tokens']:.0f}); model {rm.path}; CPU {cpu['cpu']}, {cpu['cores']} cores, "
            f"flags {' '.join(cpu['flags'])}"
        )
        jobs = [(p, e) for p in precisions for e in engines]
        for pair in range(a.pairs):
            # rotate the order each round so that no engine always runs first (or after the same one)
            k = pair % len(jobs)
            for precision, (engine, ckpt) in jobs[k:] + jobs[:k]:
                out = work / f"r{pair}-{precision}-{engine.split()[0].lower()}{'-ckpt-' + ckpt if ckpt else ''}"
                console.print(f"round {pair + 1}/{a.pairs}: {engine}, {precision}")
                if ckpt is None:
                    r = run_ours(work / "subset", out, a.steps, a.grad_accum, a.max_length, precision, a.compile)
                else:
                    r = run_llamafactory(
                        lf_venv, work / "subset", out, a.steps, a.grad_accum, a.max_length, precision, ckpt == "on"
                    )
                r.update(engine=engine, precision=precision, round=pair + 1)
                r["tokens_per_s"] = sub["tokens"] / r["train_s"]
                r["own_tokens_per_s"] = r["own_tokens"] / r["train_s"] if r.get("own_tokens") else None
                runs.append(r)
                if a.json:  # what has run so far survives an interrupted benchmark
                    a.json.parent.mkdir(parents=True, exist_ok=True)
                    a.json.write_text(json.dumps({"machine": cpu, "subset": sub, "runs": runs, "partial": True}))

    ratios: dict[str, Any] = {}
    for precision in precisions:
        ours = {r["round"]: r for r in runs if r["engine"] == "mi-llm" and r["precision"] == precision}
        for engine, _ckpt in engines[1:]:
            per_round = [
                r["train_s"] / ours[r["round"]]["train_s"]
                for r in runs
                if r["engine"] == engine and r["precision"] == precision
            ]
            ratios[f"{precision}, {engine}"] = spread(per_round)
    if len(precisions) == 2:
        fp32 = {r["round"]: r for r in runs if r["engine"] == "mi-llm" and r["precision"] == "fp32"}
        bf16 = {r["round"]: r for r in runs if r["engine"] == "mi-llm" and r["precision"] == "bf16"}
        ratios["mi-llm bf16 vs fp32"] = spread([fp32[k]["train_s"] / bf16[k]["train_s"] for k in fp32])
    results = {
        "machine": cpu,
        "model": "gemma-3-270m",
        "data": str(a.data or "demo train split"),
        "steps": a.steps,
        "grad_accum": a.grad_accum,
        "max_length": a.max_length,
        "pairs": a.pairs,
        "compile": a.compile,
        "subset": sub,
        "runs": runs,
        "ratios": ratios,
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
    }
    t = Table(
        title=f"LoRA training, gemma-3-270m, CPU ({cpu['cores']} cores, {' '.join(cpu['flags'])}): {n} samples "
        f"({sub['tokens']:,} tokens), {a.steps} steps x {a.grad_accum}, {a.pairs} interleaved rounds"
    )
    cols = (
        "engine",
        "precision",
        "median train s",
        "tokens/s (own count)",
        "own tokens",
        "peak RSS (MB)",
        "final loss",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("engine", "precision") else "right")
    for precision in precisions:
        for engine, _ in engines:
            rs = [r for r in runs if r["engine"] == engine and r["precision"] == precision]
            med = statistics.median(r["train_s"] for r in rs)
            own = rs[0].get("own_tokens")
            t.add_row(
                engine,
                precision,
                f"{med:.1f}",
                f"{own / med:.1f}" if own else "-",
                f"{own:,}" if own else "-",
                f"{max(r['peak_rss_mb'] for r in rs):,.0f}",
                f"{rs[-1]['final_loss']:.4f}" if rs[-1].get("final_loss") is not None else "-",
            )
    console.print(t)
    for name, r in ratios.items():
        ok = (
            ""
            if name.startswith("mi-llm")
            else f" ({'meets' if r['median'] >= TARGET_RATIO else 'MISSES'} the {TARGET_RATIO:.0f}x target)"
        )
        console.print(
            f"{name}: median {r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f}, {r['n']} rounds){ok}"
        )
    ours_rss = max(
        (r["peak_rss_mb"] for r in runs if r["engine"] == "mi-llm" and r["precision"] == "fp32"), default=None
    )
    if ours_rss is not None:
        ok = "meets" if ours_rss <= TARGET_RSS_MB else "MISSES"
        console.print(f"our peak RSS in fp32 {ours_rss:,.0f} MB ({ok} the {TARGET_RSS_MB:,} MB target)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
