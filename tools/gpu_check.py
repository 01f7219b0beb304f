"""`make gpu-check`: the paper's GPU path, end to end, on one NVIDIA GPU in a few minutes.

On a machine with one CUDA GPU and torch, transformers, peft and accelerate installed (no
model hub needed: nothing is downloaded), it

1. builds a small Gemma-3 model locally (random weights, a byte-level tokenizer trained on
   the spot: mi_llm.llm.tiny) and round samples from the bundled demo corpus;
2. runs LoRA SFT in bf16 through `accelerate launch` (`mi-llm train --precision bf16`);
3. DPO in bf16 through `accelerate launch` from the SFT adapter (`mi-llm train --method dpo`),
   on stand-in pairs (each round's corpus reply chosen, another round's rejected), when this
   mi-llm has the DPO trainer (mi_llm.train.preference); else skipped, with the reason;
4. predicts with the hf backend on CUDA (`mi-llm predict --backend hf --device cuda`);
5. reloads the adapter on the CPU and checks that greedy decoding gives the same tokens as on
   the GPU (both in fp32, so that only the device differs; the bf16 predictions of step 4
   are compared too, and reported, since bf16 may flip near-ties);
6. notes vLLM and DeepSpeed: present (version) or missing (skipped, with the reason);

and writes `report.json` and `report.md` to --out. Exit code 0 when every check that ran
passed (a skip is not a failure), 1 when one failed; without CUDA it prints
"gpu-check skipped: no CUDA ..." and exits 0. `--device cpu` runs the same path on the CPU
(a dry run: the test suite does this with a tiny model).

    python tools/gpu_check.py [--out build/gpu-check] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

BUDGET_S = 8 * 60  # the whole check must finish within this on one GPU


class Check:
    """One step's outcome: ok / skipped / failed, with what it measured or why."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = "ok"
        self.detail: dict[str, Any] = {}
        self.reason = ""
        self.seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 1)}
        if self.reason:
            d["reason"] = self.reason
        if self.detail:
            d["detail"] = self.detail
        return d


class Skip(Exception):
    pass


def run_step(checks: list[Check], name: str, fn: Callable[[Check], None]) -> Check:
    c = Check(name)
    t0 = time.monotonic()
    try:
        fn(c)
    except Skip as e:
        c.status, c.reason = "skipped", str(e)
    except Exception as e:  # a failed step is reported, and the steps that need it are skipped
        c.status, c.reason = "failed", f"{type(e).__name__}: {e}"
    c.seconds = time.monotonic() - t0
    checks.append(c)
    print(f"[gpu-check] {name}: {c.status}{' (' + c.reason + ')' if c.reason else ''} in {c.seconds:.1f} s", flush=True)
    return c


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = BUDGET_S) -> None:
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or _env(), cwd=REPO, timeout=timeout)
    if r.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"exit {r.returncode} ({log.name}): {tail}")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "accelerate", "vllm", "deepspeed"):
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        try:
            out[name] = str(__import__(name).__version__)
        except Exception as e:  # installed but broken (e.g. a CUDA mismatch): say so
            out[name] = f"import failed: {type(e).__name__}: {e}"
    return out


def make_data(work: Path, train: int, test: int) -> Path:
    from mi_llm.build.stage import build
    from mi_llm.resources import demo_files

    build(demo_files(None, "mi"), work / "build", train=train, test=test, seed=42)
    return work / "build"


def write_pairs(build: Path, out: Path) -> Path:
    """Preference pairs for the DPO step: each training round's own reply chosen, the next
    round's reply rejected (a stand-in for `mi-llm prefs build`, which needs a MITI coder)."""
    from mi_llm.build.samples import read_samples
    from mi_llm.io import write_jsonl
    from mi_llm.prefs.pairs import PreferencePair

    samples = read_samples(build / "samples.train.jsonl")
    pairs = []
    for s, other in zip(samples, samples[1:] + samples[:1], strict=True):
        if s.response == other.response:
            continue
        pairs.append(
            PreferencePair(
                pair_id=f"{s.sample_id}-gpu-check",
                sample_id=s.sample_id,
                dialogue_id=s.dialogue_id,
                round=s.round,
                language=s.language,
                system=s.system,
                history=s.history,
                query=s.query,
                chosen={"text": s.response, "score": 1.0},
                rejected={"text": other.response, "score": 0.0},
                coder="gpu-check (the corpus reply chosen)",
            ).model_dump(mode="json")
        )
    write_jsonl(out, pairs)
    return out


def greedy_ids(model_dir: Path, adapter: Path, data: Path, device: str, n: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids) of the first `n` test prompts, base + adapter merged, fp32."""
    import torch

    from mi_llm.build.samples import read_samples
    from mi_llm.llm.backends.hf import apply_adapter
    from mi_llm.llm.load import load_model, stop_token_ids
    from mi_llm.llm.resolve import resolve_model
    from mi_llm.llm.templates import encode_prompt

    rm = resolve_model(str(model_dir))
    model, tok = load_model(rm, dtype=torch.float32, device=device)
    model = apply_adapter(model, adapter, rm.path, merge=True)
    stops = stop_token_ids(tok)
    out = []
    for s in read_samples(data / "samples.test.jsonl")[:n]:
        ids = torch.tensor([encode_prompt(tok, s.messages())], device=model.device)
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        out.append(gen[0, ids.shape[1] :].tolist())
    del model
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of the same path")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check", help="report folder")
    ap.add_argument("--hidden", type=int, default=512, help="hidden size of the small model")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of SFT")
    ap.add_argument("--train-dialogues", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8, help="test prompts predicted and compared")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--max-length", type=int, default=768)
    a = ap.parse_args(argv)

    import torch

    from mi_llm.io import atomic_writer, write_json

    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "device": a.device,
        "versions": versions(),
        "cuda": {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda},
        "budget_s": BUDGET_S,
    }
    if a.device == "cuda" and not torch.cuda.is_available():
        msg = (
            f"gpu-check skipped: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "`--device cpu` runs the same path on the CPU"
        )
        report.update(status="skipped", reason=msg)
        write_json(out / "report.json", report)
        print(msg)
        return 0
    if a.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        report["cuda"].update(
            name=p.name,
            memory_gib=round(p.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            devices=torch.cuda.device_count(),
        )

    work = out / "work"
    work.mkdir(exist_ok=True)
    checks: list[Check] = []
    state: dict[str, Path] = {}

    def step_model(c: Check) -> None:
        from mi_llm.llm.tiny import make_tiny_model

        state["model"] = make_tiny_model(work / "model", layers=a.layers, hidden=a.hidden)
        state["data"] = make_data(work, a.train_dialogues, 4)
        c.detail = {"hidden": a.hidden, "layers": a.layers, "model": str(state["model"])}

    def step_sft(c: Check) -> None:
        if "data" not in state:
            raise Skip("no model/data")
        adapter = work / "sft"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
        cmd += ["--mixed_precision", "bf16", "--dynamo_backend", "no"] + (["--cpu"] if a.device == "cpu" else [])
        cmd += ["-m", "mi_llm", "train", "--model", str(state["model"]), "--data", str(state["data"])]
        cmd += ["--output", str(adapter), "--max-steps", str(a.steps), "--grad-accum", "4", "--lr", "1e-3"]
        cmd += ["--max-length", str(a.max_length), "--skip-long", "--precision", "bf16", "--save-steps", "1000000"]
        _run(cmd, work / "sft.log")
        conf = json.loads((adapter / "train_config.json").read_text())
        rt, res = conf["runtime"], conf["result"]
        if rt["precision"] != "bf16":
            raise RuntimeError(f"trained in {rt['precision']}, not bf16")
        if a.device == "cuda" and not rt["device"].startswith("cuda"):
            raise RuntimeError(f"trained on {rt['device']}, not on the GPU")
        log = [json.loads(x)["loss"] for x in (adapter / "train_log.jsonl").read_text().splitlines()]
        c.detail = {
            "device": rt["device"],
            "precision": rt["precision"],
            "steps": res["steps"],
            "first_loss": log[0],
            "final_loss": log[-1],
            "tokens_per_s": res["tokens_per_s_this_run"],
        }
        if not all(math.isfinite(x) for x in log):  # bf16 overflow shows up as inf/nan
            raise RuntimeError(f"non-finite loss: {log}")
        state["adapter"] = adapter

    def step_dpo(c: Check) -> None:
        if (
            importlib.util.find_spec("mi_llm.train.preference") is None
            or importlib.util.find_spec("mi_llm.prefs.pairs") is None
        ):
            raise Skip("this mi-llm has no DPO trainer (mi_llm.train.preference, mi_llm.prefs.pairs)")
        if "adapter" not in state:
            raise Skip("no SFT adapter to start from")
        pairs = write_pairs(state["data"], work / "pairs.jsonl")
        out = work / "dpo"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
        cmd += ["--mixed_precision", "bf16", "--dynamo_backend", "no"] + (["--cpu"] if a.device == "cpu" else [])
        cmd += ["-m", "mi_llm", "train", "--method", "dpo", "--adapter", str(state["adapter"])]
        cmd += ["--model", str(state["model"]), "--data", str(pairs), "--output", str(out)]
        cmd += ["--max-steps", str(max(2, a.steps // 4)), "--grad-accum", "2", "--lr", "1e-4"]
        cmd += ["--max-length", str(a.max_length), "--skip-long", "--precision", "bf16", "--save-steps", "1000000"]
        _run(cmd, work / "dpo.log")
        conf = json.loads((out / "train_config.json").read_text())
        log = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
        c.detail = {"precision": conf["runtime"]["precision"], "steps": len(log), "losses": log}
        if conf["runtime"]["precision"] != "bf16" or not all(math.isfinite(x) for x in log):
            raise RuntimeError(f"precision {conf['runtime']['precision']}, losses {log}")

    def step_predict(c: Check) -> None:
        if "adapter" not in state:
            raise Skip("no adapter (SFT did not finish)")
        preds = work / "predictions.jsonl"
        cmd = [sys.executable, "-m", "mi_llm", "predict", "--model", str(state["model"])]
        cmd += ["--adapter", str(state["adapter"]), "--data", str(state["data"]), "--backend", "hf"]
        cmd += ["--device", a.device, "--limit", str(a.prompts), "--max-new-tokens", str(a.max_new_tokens)]
        cmd += ["--overwrite", "-o", str(preds)]
        _run(cmd, work / "predict.log")
        rows = [json.loads(x) for x in preds.read_text().splitlines() if x.strip()]
        if len(rows) != a.prompts:
            raise RuntimeError(f"{len(rows)} predictions for {a.prompts} prompts")
        c.detail = {"predictions": len(rows), "file": str(preds)}

    def step_reload(c: Check) -> None:
        if "adapter" not in state:
            raise Skip("no adapter (SFT did not finish)")
        args = (state["model"], state["adapter"], state["data"])
        on_device = greedy_ids(*args, a.device, a.prompts, a.max_new_tokens)
        on_cpu = greedy_ids(*args, "cpu", a.prompts, a.max_new_tokens)
        same = sum(x == y for x, y in zip(on_device, on_cpu, strict=True))
        c.detail = {"prompts": a.prompts, "identical": same, "devices": [a.device, "cpu"], "dtype": "float32"}
        if same != a.prompts:
            raise RuntimeError(f"greedy output differs between {a.device} and the CPU on {a.prompts - same} prompts")

    def step_optional(name: str, why: str) -> Callable[[Check], None]:
        def fn(c: Check) -> None:
            v = report["versions"].get(name)
            if v is None:
                raise Skip(f"{name} is not installed ({why})")
            raise Skip(f"{name} {v} is installed; gpu-check does not exercise it yet ({why})")

        return fn

    run_step(checks, "small model + data", step_model)
    run_step(checks, "LoRA SFT, bf16, accelerate launch", step_sft)
    run_step(checks, "DPO, bf16", step_dpo)
    run_step(checks, f"predict, hf on {a.device}", step_predict)
    run_step(checks, f"adapter reloaded on CPU: same greedy output as on {a.device}", step_reload)
    run_step(checks, "vLLM", step_optional("vllm", "the vllm backend of mi-llm predict"))
    run_step(checks, "DeepSpeed", step_optional("deepspeed", "configs/accelerate/deepspeed_zero*.yaml"))

    total = time.monotonic() - started
    failed = [c.name for c in checks if c.status == "failed"]
    report.update(
        status="failed" if failed else "ok",
        seconds=round(total, 1),
        within_budget=total <= BUDGET_S,
        checks=[c.as_dict() for c in checks],
    )
    write_json(out / "report.json", report)
    with atomic_writer(out / "report.md") as f:
        cuda = report["cuda"]
        where = f"{cuda.get('name', 'CPU')} ({a.device})" if a.device == "cuda" else "CPU (dry run, --device cpu)"
        f.write(f"# gpu-check on {where}\n\n")
        f.write(", ".join(f"{k} {v or 'missing'}" for k, v in report["versions"].items()) + "\n\n")
        f.write("| check | status | seconds | detail |\n|---|---|---|---|\n")
        for c in checks:
            detail = c.reason or ", ".join(f"{k} {v}" for k, v in c.detail.items() if k not in ("file", "model"))
            f.write(f"| {c.name} | {c.status} | {c.seconds:.1f} | {detail} |\n")
        f.write(f"\nTotal {total:.0f} s (budget {BUDGET_S} s): {'failed: ' + ', '.join(failed) if failed else 'ok'}\n")
    print(f"[gpu-check] {report['status']} in {total:.0f} s; report: {out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
