"""Load test of `mi-llm serve`: many concurrent streaming clients on one model.

Starts `mi-llm serve` on 127.0.0.1 (a separate process) with the embedded model through
llama.cpp (hf when llama-cpp-python is missing), waits for it, sends one warm-up request,
then runs N concurrent streaming chat requests with httpx (async), each with its own
message, and measures per request the time to the first content token and the total time,
and overall the throughput. Every request must succeed: any error makes the exit code 1.

    python benchmarks/bench_serve_load.py --clients 50 --max-tokens 32 -o results.json

Wrap it in the shared CPU lock on a shared machine: `flock /tmp/mi-llm-heavy.lock python ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MESSAGES = [
    ("en", "I want to quit smoking, but every time I get stressed I light up again."),
    ("en", "My doctor says I should walk more, but I never find the time."),
    ("en", "I drink a few beers every night to relax and I am not sure it is a problem."),
    ("en", "I keep snacking late at night even though I want to lose weight."),
    ("en", "Part of me wants to exercise, part of me just wants to rest after work."),
    ("zh", "我想戒烟，可是一有压力就又开始抽。"),
    ("zh", "医生让我多运动，但我总是找不到时间。"),
    ("zh", "我每天晚上都要喝点酒才能放松，不知道这算不算问题。"),
    ("zh", "我想减肥，可晚上总忍不住吃零食。"),
    ("zh", "我知道应该早点睡，但就是放不下手机。"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 4)


def summary(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "max": round(max(values), 4) if values else None,
        "mean": round(statistics.fmean(values), 4) if values else None,
    }


async def one_request(client: httpx.AsyncClient, i: int, max_tokens: int, t_zero: float) -> dict[str, Any]:
    lang, text = MESSAGES[i % len(MESSAGES)]
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"{text} ({i})"}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "session_id": f"bench-{i}",
        "language": lang,
    }
    t0 = time.monotonic()
    rec: dict[str, Any] = {"i": i, "start": round(t0 - t_zero, 4), "ok": False}
    pieces = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                rec["error"] = (await r.aread()).decode("utf-8", "replace")[:200]
                return rec
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                ev = json.loads(data)
                if "error" in ev:
                    rec["error"] = ev["error"].get("message")
                    return rec
                if ev.get("usage"):
                    rec["completion_tokens"] = ev["usage"]["completion_tokens"]
                    rec["prompt_tokens"] = ev["usage"]["prompt_tokens"]
                for ch in ev.get("choices") or []:
                    if ch["delta"].get("content"):
                        if pieces == 0:
                            rec["ttft"] = round(time.monotonic() - t0, 4)
                        pieces += 1
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
            rec["ok"] = done and pieces > 0
            if not rec["ok"]:
                rec["error"] = "stream ended without [DONE]" if not done else "empty reply"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["total"] = round(time.monotonic() - t0, 4)
        rec["pieces"] = pieces
    return rec


async def run_load(url: str, clients: int, max_tokens: int, timeout: float) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(timeout, connect=30)) as client:
        t_zero = time.monotonic()
        tasks = [asyncio.create_task(one_request(client, i, max_tokens, t_zero)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        wall = time.monotonic() - t_zero
        results = [t.result() for t in done]
        results += [{"i": -1, "ok": False, "error": "timed out"} for _ in pending]
    return sorted(results, key=lambda r: r["i"]), wall


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--backend", default=None, help="llamacpp | hf | echo (default: llamacpp if installed, else hf)")
    ap.add_argument("--model", default=None, help="default: the embedded gemma-3-270m")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all cores)")
    ap.add_argument("--timeout", type=float, default=900, help="bound on the whole load phase, seconds")
    ap.add_argument("--startup-timeout", type=float, default=600)
    ap.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="mi-llm-bench-")
    cmd = [
        sys.executable,
        "-m",
        "mi_llm",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(Path(tmp) / "sessions.sqlite3"),
        "--rate-limit",
        "0",
        "--max-queue",
        str(args.clients + 10),
        "--max-tokens-limit",
        str(max(args.max_tokens, 16)),
    ]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log_path = Path(tmp) / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        startup = wait_ready(url, proc, args.startup_timeout)
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        warm, _ = asyncio.run(run_load(url, 1, args.max_tokens, 120))  # one request alone: the baseline
        results, wall = asyncio.run(run_load(url, args.clients, args.max_tokens, args.timeout))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    engine_line = next((line for line in log_path.read_text(errors="replace").splitlines() if "serving " in line), "")
    ok = [r for r in results if r["ok"]]
    tokens = sum(r.get("completion_tokens", 0) for r in ok)
    single = warm[0]
    out = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "model": models[0]["id"] if models else None,
        "server": engine_line.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "startup_s": round(startup, 2),
        "single_request": {
            "ttft_s": single.get("ttft"),
            "total_s": single.get("total"),
            "completion_tokens": single.get("completion_tokens"),
            "tokens_per_s": round(single["completion_tokens"] / single["total"], 2)
            if single.get("completion_tokens") and single.get("total")
            else None,
        },
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 3),
        "ttft_s": summary([r["ttft"] for r in ok if "ttft" in r]),
        "total_s": summary([r["total"] for r in ok]),
        "completion_tokens": tokens,
        "throughput": {"requests_per_s": round(len(ok) / wall, 3), "completion_tokens_per_s": round(tokens / wall, 2)},
        "finish_reasons": {k: sum(1 for r in ok if r.get("finish_reason") == k) for k in ("stop", "length")},
        "failures": [r for r in results if not r["ok"]][:10],
    }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0 if out["errors"] == 0 and out["ok"] == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
