"""Benchmark `mi-llm evaluate`: the reference libraries vs our implementation, side by side.

Builds N realistic prediction/reference pairs (Chinese and English counselor replies),
writes them as a predictions.jsonl, and times the whole command in fresh processes
(start-up and jieba's dictionary load included):
  reference  the libraries called as LLaMA-Factory calls them (jieba, rouge-chinese, nltk)
             and sacreBLEU's own corpus_score, one process
  ours       the fast implementation, 1 worker and the default (2 workers on 2 cores)
and checks that every output (metrics.json and the per-sample lines) is identical.

Pairs: references are real counselor turns from ../shared/data (CPsyCounD, AnnoMI) when
present, else sentences assembled from a built-in MI phrase bank; predictions are model-like
replies: half rework the reference (clauses kept, dropped, swapped, padded with other
turns), half are another turn, some of them two turns long.

    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_metrics.py --pairs 10000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]

ZH_BANK = {
    "open": ["听起来", "我听到你说", "看起来", "你提到", "嗯，", "谢谢你愿意分享，"],
    "body": [
        "你最近压力很大",
        "工作让你很疲惫",
        "你很担心家人的身体",
        "你想少喝一点酒",
        "戒烟对你来说并不容易",
        "你已经尝试过很多次了",
        "睡眠一直不太好",
        "你希望自己能更健康",
        "你对改变既期待又犹豫",
        "这件事对你很重要",
    ],
    "close": [
        "你愿意多说一点吗？",
        "你觉得呢？",
        "是什么让你想要改变？",
        "我们可以一起想想办法。",
        "这对你意味着什么？",
    ],
}
EN_BANK = {
    "open": ["It sounds like", "I hear that", "So", "You mentioned that", "Okay,", "Thanks for sharing that;"],
    "body": [
        "you've been under a lot of stress",
        "work has been exhausting",
        "you worry about your family's health",
        "you'd like to drink a bit less",
        "quitting smoking hasn't been easy",
        "you've tried several times before",
        "your sleep hasn't been great",
        "you want to feel healthier",
        "part of you wants to change and part of you doesn't",
    ],
    "close": [
        "Can you tell me more?",
        "What do you think?",
        "What makes you want to change?",
        "Where would you like to start?",
    ],
}


def _bank_turn(bank: dict[str, list[str]], rng: random.Random, zh: bool) -> str:
    body = rng.sample(bank["body"], rng.randint(1, 3))
    sep = "，" if zh else ", and "
    end = "。" if zh else "."
    return f"{rng.choice(bank['open'])}{'' if zh else ' '}{sep.join(body)}{end}{'' if zh else ' '}{rng.choice(bank['close'])}"


def real_turns(data: Path, limit: int) -> tuple[list[str], list[str]]:
    zh: list[str] = []
    for f in sorted((data / "cpsycound" / "CPsyCounD").glob("case_*.txt")):
        zh += [
            line[6:].strip() for line in f.read_text(encoding="utf-8").splitlines() if line.startswith("心理咨询师：")
        ]
        if len(zh) >= limit:
            break
    en: list[str] = []
    path = data / "annomi" / "AnnoMI-simple.csv"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            en = [r["utterance_text"] for r in csv.DictReader(fh) if r["interlocutor"] == "therapist"]
    return [t for t in zh if t][:limit], [t for t in en if len(t) > 1][:limit]


_CLAUSE = re.compile(r"(?<=[，。！？,.!?;；])")


def _rework(ref: str, pool: list[str], rng: random.Random) -> str:
    """A reply that overlaps the reference: its clauses kept, dropped or swapped, plus others."""
    clauses = [c for c in _CLAUSE.split(ref) if c]
    other = [c for c in _CLAUSE.split(rng.choice(pool)) if c]
    kept = [c for c in clauses if rng.random() < 0.7] + rng.sample(other, min(len(other), rng.randint(0, 2)))
    rng.shuffle(kept)
    return "".join(kept) or ref


def make_pairs(n: int, lang: str, seed: int) -> tuple[list[dict], str]:
    rng = random.Random(seed)
    data = Path(os.environ.get("MI_LLM_SHARED_DATA", REPO / ".." / "shared" / "data"))
    zh, en = real_turns(data, 20000) if data.is_dir() else ([], [])
    source = "real counselor turns (CPsyCounD, AnnoMI)"
    if len(zh) < 100 or len(en) < 100:
        zh = [_bank_turn(ZH_BANK, rng, True) for _ in range(5000)]
        en = [_bank_turn(EN_BANK, rng, False) for _ in range(5000)]
        source = "built-in MI phrase bank"
    rows = []
    for i in range(n):
        is_zh = lang == "zh" or (lang == "mixed" and i % 10 < 7)  # mixed: 70% Chinese
        pool = zh if is_zh else en
        ref = rng.choice(pool)
        if rng.random() < 0.5:
            pred = _rework(ref, pool, rng)
        else:
            pred = rng.choice(pool) + (rng.choice(pool) if rng.random() < 0.3 else "")
        rows.append(
            {"sample_id": f"bench-{i}", "language": "zh" if is_zh else "en", "prediction": pred, "reference": ref}
        )
    return rows, source


def timed_run(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (all processes) of `mi-llm evaluate ARGS` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mi_llm", "evaluate", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"mi-llm evaluate failed:\n{r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--lang", choices=["mixed", "zh", "en"], default="mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="time only our implementation")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    opts = ap.parse_args(argv)
    console = Console()

    rows, source = make_pairs(opts.pairs, opts.lang, opts.seed)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        tmpdir = Path(tmp)
        src = tmpdir / "predictions.jsonl"
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        runs = [("ours", "1", ["--workers", "1"]), ("ours", "default", [])]
        if not opts.skip_reference:
            runs.insert(0, ("reference libraries", "1", ["--reference-impl"]))
        results = []
        outputs = {}
        for name, workers, extra in runs:
            tag = f"{name}-{workers}".replace(" ", "_")
            out, per = tmpdir / f"{tag}.json", tmpdir / f"{tag}.per.jsonl"
            wall, cpu = timed_run([str(src), "-o", str(out), "--per-sample", str(per), *extra])
            metrics = json.loads(out.read_text(encoding="utf-8"))
            metrics.pop("implementation")
            metrics.pop("input")
            outputs[tag] = (metrics, per.read_bytes())
            results.append(
                {"implementation": name, "workers": workers, "wall_s": wall, "cpu_s": cpu, "metrics": metrics}
            )
        first = next(iter(outputs.values()))
        identical = all(v == first for v in outputs.values())

    n_zh = sum(r["language"] == "zh" for r in rows)
    mean_chars = sum(len(r["prediction"]) + len(r["reference"]) for r in rows) / (2 * len(rows))
    table = Table(title=f"mi-llm evaluate on {opts.pairs:,} pairs ({n_zh:,} zh, {opts.pairs - n_zh:,} en)")
    for col in ("implementation", "workers", "wall s", "CPU s", "pairs/s", "speed-up"):
        table.add_column(col, justify="left" if col == "implementation" else "right")
    base = results[0]["wall_s"]
    for r in results:
        table.add_row(
            r["implementation"],
            r["workers"],
            f"{r['wall_s']:.2f}",
            f"{r['cpu_s']:.2f}",
            f"{opts.pairs / r['wall_s']:,.0f}",
            f"{base / r['wall_s']:.1f}x",
        )
    console.print(table)
    paper = results[0]["metrics"]["paper"]
    console.print(
        f"pairs: {source}; mean {mean_chars:.0f} characters per text; "
        f"cpus: {len(os.sched_getaffinity(0))}; load average: {os.getloadavg()[0]:.2f}\n"
        f"outputs identical across implementations (metrics.json and per-sample lines): {identical}\n"
        f"bleu-4 {paper['bleu-4']:.4f}  rouge-1 {paper['rouge-1']:.4f}  rouge-2 {paper['rouge-2']:.4f}  "
        f"rouge-l {paper['rouge-l']:.4f}  sacrebleu {results[0]['metrics']['extended']['sacrebleu']:.2f}",
        highlight=False,
    )
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "pairs": opts.pairs,
                    "source": source,
                    "identical": identical,
                    "runs": [{k: v for k, v in r.items() if k != "metrics"} for r in results],
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
