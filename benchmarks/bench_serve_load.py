"""Load test of `mi-llm serve`: many concurrent streaming clients on one model, side by side
with llama-cpp-python's own OpenAI server on the same GGUF.

Starts `mi-llm serve` on 127.0.0.1 (a separate process) with the embedded model through
llama.cpp (hf when llama-cpp-python is missing) and, with `--compare-llama-cpp-server`,
`python -m llama_cpp.server` on the model's GGUF with the same threads and context; waits
for them; then, `--repeats` times and alternating which goes first, for each server: one
request alone (the single-stream baseline), then N concurrent streaming chat requests with
httpx (async), each with its own message (the same system prompt and message for both
servers), greedy, a fixed `max_tokens`. Per request it measures the time to the first
content token and the total time, and per run the throughput. Every request to mi-llm must
succeed: any error makes the exit code 1 (llama_cpp.server's errors are reported).

    python benchmarks/bench_serve_load.py --clients 50 --max-tokens 32 --compare-llama-cpp-server -o results.json

llama_cpp.server needs the `server` extra of llama-cpp-python (sse-starlette,
starlette-context, pydantic-settings); `--llama-cpp-server-path DIR` adds a folder where
they are installed (`pip install --target DIR`) to its PYTHONPATH. It runs with
`--interrupt_requests False`: by default a new request cuts the stream being served.
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


async def one_request(
    client: httpx.AsyncClient, i: int, max_tokens: int, t_zero: float, ours: bool = True
) -> dict[str, Any]:
    lang, text = MESSAGES[i % len(MESSAGES)]
    body: dict[str, Any] = {
        "model": "bench",
        "messages": [{"role": "system", "content": system_prompt(lang)}, {"role": "user", "content": f"{text} ({i})"}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    if ours:  # mi-llm's own fields: the session store is part of what is measured
        body.update(session_id=f"bench-{i}-{t_zero:.0f}", language=lang)
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
                    if (ch.get("delta") or {}).get("content"):
                        if pieces == 0:
                            rec["ttft"] = round(time.monotonic() - t0, 4)
                        pieces += 1
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
            if "completion_tokens" not in rec:  # no usage in the stream (llama_cpp.server): one piece a token
                rec["completion_tokens"], rec["tokens_counted_as_pieces"] = pieces, True
            rec["ok"] = done and pieces > 0
            if not rec["ok"]:
                rec["error"] = "stream ended without [DONE]" if not done else "empty reply"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["total"] = round(time.monotonic() - t0, 4)
        rec["pieces"] = pieces
    return rec


_PROMPTS: dict[str, str] = {}


def system_prompt(lang: str) -> str:
    """mi-llm's MI system prompt, sent explicitly so both servers see the same conversation."""
    if lang not in _PROMPTS:
        from mi_llm.prompts import load_prompt

        _PROMPTS[lang] = load_prompt("system", lang)
    return _PROMPTS[lang]


async def run_load(
    url: str, clients: int, max_tokens: int, timeout: float, ours: bool = True, first: int = 0
) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(timeout, connect=30)) as client:
        t_zero = time.monotonic()
        tasks = [asyncio.create_task(one_request(client, first + i, max_tokens, t_zero, ours)) for i in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        wall = time.monotonic() - t_zero
        results = [t.result() for t in done]
        results += [{"i": -1, "ok": False, "error": "timed out"} for _ in pending]
    return sorted(results, key=lambda r: r["i"]), wall


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, path: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"a server was not ready after {timeout:.0f} s")


def mi_llm_command(args: argparse.Namespace, port: int, tmp: str) -> list[str]:
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
        "--n-ctx",
        str(args.n_ctx),
    ]
    if args.parallel:
        cmd += ["--parallel", str(args.parallel)]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def llama_cpp_server_command(args: argparse.Namespace, port: int) -> list[str]:
    from mi_llm.llm.backends.llamacpp import find_gguf

    gguf, _ = find_gguf(args.model or "gemma-3-270m", None)
    threads = str(args.threads or os.cpu_count() or 1)
    # mi-llm's llama.cpp build loads its CPU backend at run time (mi_llm.llm.llamacpp_runtime):
    # load it the same way, then start the server as `python -m llama_cpp.server` would.
    boot = (
        "import runpy, sys; from mi_llm.llm.llamacpp_runtime import import_llama_cpp; import_llama_cpp(); "
        "sys.argv[0] = 'llama_cpp.server'; runpy.run_module('llama_cpp.server', run_name='__main__')"
    )
    return [
        sys.executable,
        "-c",
        boot,
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(args.n_ctx),
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]


def one_run(name: str, url: str, args: argparse.Namespace, first: int) -> dict[str, Any]:
    ours = name == "mi-llm"
    warm, _ = asyncio.run(run_load(url, 1, args.max_tokens, 120, ours, first))  # one request alone: the baseline
    results, wall = asyncio.run(run_load(url, args.clients, args.max_tokens, args.timeout, ours, first + 1))
    ok = [r for r in results if r["ok"]]
    tokens = sum(r.get("completion_tokens", 0) for r in ok)
    single = warm[0]
    single_rate = (
        round(single["completion_tokens"] / single["total"], 2)
        if single.get("completion_tokens") and single.get("total")
        else None
    )
    rate = round(tokens / wall, 2)
    return {
        "single_request": {
            "ok": single["ok"],
            "ttft_s": single.get("ttft"),
            "total_s": single.get("total"),
            "completion_tokens": single.get("completion_tokens"),
            "tokens_per_s": single_rate,
        },
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 3),
        "ttft_s": summary([r["ttft"] for r in ok if "ttft" in r]),
        "total_s": summary([r["total"] for r in ok]),
        "completion_tokens": tokens,
        "throughput": {"requests_per_s": round(len(ok) / wall, 3), "completion_tokens_per_s": rate},
        "aggregate_vs_single_stream": round(rate / single_rate, 2) if single_rate else None,
        "finish_reasons": {k: sum(1 for r in ok if r.get("finish_reason") == k) for k in ("stop", "length")},
        "failures": [r for r in results if not r["ok"]][:10],
    }


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "f16c"})
    except OSError:
        pass
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--backend", default=None, help="llamacpp | hf | echo (default: llamacpp if installed, else hf)")
    ap.add_argument("--model", default=None, help="default: the embedded gemma-3-270m")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all cores)")
    ap.add_argument("--parallel", type=int, default=None, help="mi-llm serve --parallel (default: its own)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context per conversation, both servers")
    ap.add_argument("--repeats", type=int, default=1, help="runs per server, alternating which goes first")
    ap.add_argument("--compare-llama-cpp-server", action="store_true", help="also load llama_cpp.server")
    ap.add_argument("--llama-cpp-server-path", default=None, help="folder added to llama_cpp.server's PYTHONPATH")
    ap.add_argument("--timeout", type=float, default=900, help="bound on each load phase, seconds")
    ap.add_argument("--startup-timeout", type=float, default=600)
    ap.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="mi-llm-bench-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    servers: dict[str, tuple[list[str], dict[str, str], str]] = {
        "mi-llm": (mi_llm_command(args, free_port(), tmp), env, "/healthz")
    }
    if args.compare_llama_cpp_server:
        lcs_env = dict(env)
        if args.llama_cpp_server_path:
            lcs_env["PYTHONPATH"] = os.pathsep.join(p for p in (args.llama_cpp_server_path, env.get("PYTHONPATH")) if p)
        servers["llama_cpp.server"] = (llama_cpp_server_command(args, free_port()), lcs_env, "/v1/models")
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    startup: dict[str, float] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        for name, (cmd, cmd_env, ready_path) in servers.items():  # one at a time: start-up competes for the CPU
            port = cmd[cmd.index("--port") + 1]
            urls[name] = f"http://127.0.0.1:{port}"
            with open(Path(tmp) / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cmd_env)
            startup[name] = round(wait_ready(urls[name], procs[name], args.startup_timeout, ready_path), 2)
        names = list(servers)
        for rep in range(args.repeats):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                runs[name].append(one_run(name, urls[name], args, first=rep * (args.clients + 1)))
                print(f"run {rep + 1} {name}: {json.dumps(_headline(runs[name][-1]))}", file=sys.stderr)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log_text = (Path(tmp) / "mi-llm.log").read_text(errors="replace")
    engine_line = next((line for line in log_text.splitlines() if "serving " in line), "")
    out = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "n_ctx": args.n_ctx,
        "repeats": args.repeats,
        "server": engine_line.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_flags": cpu_flags(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "startup_s": startup,
        "summary": {name: _median_summary(r) for name, r in runs.items()},
        "runs": runs,
    }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    ours = runs["mi-llm"]
    return 0 if all(r["errors"] == 0 and r["ok"] == args.clients and r["single_request"]["ok"] for r in ours) else 1


def _headline(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": run["ok"],
        "errors": run["errors"],
        "ttft_p50": run["ttft_s"]["p50"],
        "tokens_per_s": run["throughput"]["completion_tokens_per_s"],
        "single_tokens_per_s": run["single_request"]["tokens_per_s"],
    }


def _median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats (and the spread: min, max)."""

    def spread(values: list[Any]) -> dict[str, float | None]:
        vals = [v for v in values if v is not None]
        if not vals:
            return {"median": None, "min": None, "max": None}
        return {"median": round(statistics.median(vals), 3), "min": min(vals), "max": max(vals)}

    return {
        "errors": sum(r["errors"] for r in runs),
        "ttft_p50_s": spread([r["ttft_s"]["p50"] for r in runs]),
        "ttft_p95_s": spread([r["ttft_s"]["p95"] for r in runs]),
        "completion_tokens_per_s": spread([r["throughput"]["completion_tokens_per_s"] for r in runs]),
        "single_stream_tokens_per_s": spread([r["single_request"]["tokens_per_s"] for r in runs]),
        "aggregate_vs_single_stream": spread([r["aggregate_vs_single_stream"] for r in runs]),
        "completion_tokens": [r["completion_tokens"] for r in runs],
    }


if __name__ == "__main__":
    sys.exit(main())
