"""Test-set prediction: one generated counselor reply per round sample, resumable.

Lines are appended to the output batch by batch (flushed), so an interrupted run keeps
what it finished; a rerun skips the sample ids already there (when the settings are the
same) and, at the end, rewrites the file whole, in test-set order.

`PredictBackend.choose` is where `mi-llm predict` and the pipeline pick the backend: `auto`
resolved, each backend's default batch size, its options; `backend_options` routes the
CLI's options to the backend they belong to.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.build.samples import Sample, read_samples
from mi_llm.build.strategy import Strategy, split_tag
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import repair_torn_tail, write_json, write_jsonl
from mi_llm.layout import TEST_SAMPLES, BuildPaths, meta_file
from mi_llm.llm.backends.base import Backend, GenerationConfig

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (samples done now, tokens generated now)


def resolve_test_file(data: str | Path) -> Path:
    """A samples JSONL file, or a build folder (its samples.test.jsonl)."""
    p = Path(data)
    if p.is_dir():
        f = BuildPaths(p).test_samples
        if not f.is_file():
            raise MiLlmError(f"{p}: a build folder must contain {TEST_SAMPLES}")
        return f
    if not p.is_file():
        raise MiLlmError(f"{p}: no such file")
    return p


def load_test_samples(data: str | Path, limit: int | None = None) -> tuple[Path, list[Sample]]:
    """The test file and its first `limit` samples; no samples or a repeated id is an error."""
    test_file = resolve_test_file(data)
    samples = read_samples(test_file)
    if limit is not None:
        samples = samples[: max(0, limit)]
    if not samples:
        raise MiLlmError(f"{test_file}: no samples")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise MiLlmError(f"{test_file}: duplicate sample ids")
    return test_file, samples


def count_test_samples(data: str | Path, limit: int | None = None) -> tuple[Path, int]:
    """The test file and how many samples `predict` will go through (every line checked)."""
    test_file = resolve_test_file(data)
    n = len(read_samples(test_file))
    return test_file, n if limit is None else min(n, limit)


# --------------------------------------------------------------- which backend predicts

# Conversations per generate call (and per append to the output) when none is given.
DEFAULT_BATCH_SIZE = 16
VLLM_BATCH_SIZE = 256  # vLLM schedules its own batches: give it many at once


def resolve_backend(name: str) -> str:
    """`auto` -> llamacpp where it works on this CPU, else hf; any other name as given."""
    if name != "auto":
        return name
    from mi_llm.llm.backends import resolve_auto_backend

    return resolve_auto_backend()


def default_batch_size(backend: str, options: Mapping[str, Any]) -> int:
    """Enough conversations to keep the backend busy: llamacpp 4 x parallel (at least 16),
    openai 4 x concurrency, vllm 256, hf 16 (parallel and concurrency: the backend's default
    where `options` do not say)."""
    from mi_llm.llm.backends.config import LlamaCppConfig, OpenAIConfig

    if backend == "llamacpp":
        return max(DEFAULT_BATCH_SIZE, 4 * int(options.get("parallel") or LlamaCppConfig().parallel))
    if backend == "openai":
        return 4 * int(options.get("concurrency") or OpenAIConfig().concurrency)
    if backend == "vllm":
        return VLLM_BATCH_SIZE
    return DEFAULT_BATCH_SIZE


def backend_options(
    backend: str,
    *,
    seed: int | None = None,
    device: str | None = None,
    gguf: str | Path | None = None,
    parallel: int = 1,
    threads: int | None = None,
    base_url: str | None = None,
    concurrency: int = 8,
    extra_body: str | None = None,
) -> dict[str, Any]:
    """`mi-llm predict`'s backend options as the keyword arguments of `backend` (resolved,
    not auto); the options of other backends do not apply and are left out (not checked).
    `extra_body` is the JSON object text of --extra-body."""
    if backend == "hf":
        return {"device": device}
    if backend == "llamacpp":
        return {"gguf": gguf, "parallel": parallel, "n_threads": threads, "seed": seed}
    if backend == "openai":
        return {
            "base_url": base_url,
            "concurrency": concurrency,
            "extra_body": _json_object(extra_body, "--extra-body"),
        }
    if backend == "vllm":
        return {"device": device}
    return {}


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise MiLlmError(f"{option}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise MiLlmError(f"{option}: expected a JSON object")
    return obj


@dataclass
class PredictBackend:
    """The backend that predicts, its keyword arguments and the batch size predict uses."""

    name: str  # resolved: never auto
    model: str
    adapter: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def choose(
        cls,
        backend: str,
        model: str,
        adapter: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> PredictBackend:
        name = resolve_backend(backend)
        opts = dict(options or {})
        size = batch_size or default_batch_size(name, opts)
        if name == "hf":  # it pads each of its own batches: one per predict batch
            opts.setdefault("batch_size", size)
        return cls(name, model, str(adapter) if adapter else None, opts, size)

    def load(self) -> Backend:
        from mi_llm.llm.backends import get_backend

        return get_backend(self.name, self.model, adapter=self.adapter, **self.options)

    def predict(self, data: str | Path, output: str | Path, config: GenerationConfig, **kwargs: Any) -> PredictResult:
        """Load the backend and predict (kwargs: those of `predict`)."""
        with self.load() as backend:
            return predict(backend, data, output, config, batch_size=self.batch_size, **kwargs)


def read_done(output: Path) -> dict[str, dict[str, Any]]:
    """Records already in `output` by sample id; a torn last line (killed mid-write) is dropped."""
    done: dict[str, dict[str, Any]] = {}
    if not output.is_file():
        return done
    lines = output.read_bytes().split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if lineno >= len(lines) - 1:  # the last line, cut short by an interruption
                log.warning("%s:%d: dropping an incomplete last line", output, lineno)
                break
            raise InputError(
                output, "not a predictions line (invalid JSON); remove the file or choose another -o", lineno
            ) from None
        if not isinstance(obj, dict) or "sample_id" not in obj or "prediction" not in obj:
            raise InputError(output, "not a predictions line (no sample_id/prediction)", lineno)
        done[obj["sample_id"]] = obj
    return done


@dataclass
class PredictResult:
    output: Path
    samples: int
    generated_now: int  # samples generated in this run (the rest were resumed)
    completion_tokens: int  # generated tokens in this run
    prompt_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def settings_key(
    backend_info: dict[str, Any], config: GenerationConfig, strategy: Strategy | None = None
) -> dict[str, Any]:
    """What must match for a rerun to resume (not batch size, concurrency or timing)."""
    model = backend_info.get("model")
    if isinstance(model, dict):
        model = {k: model.get(k) for k in ("name", "sha256", "path")}
    key = {
        "backend": backend_info.get("backend"),
        "model": model,
        "adapter": backend_info.get("adapter"),
        "gguf": backend_info.get("gguf"),
        "generation": config.to_dict(),
    }
    if strategy is not None:  # only when given: predictions from before --strategy still resume
        key["strategy"] = strategy.describe()
    return key


def predict(
    backend: Backend,
    data: str | Path,
    output: str | Path,
    config: GenerationConfig,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    order: str | None = None,
    strategy: Strategy | None = None,
) -> PredictResult:
    """Generate a prediction for each test sample of `data` into `output` (JSONL).

    With a `strategy` (mi_llm.build.strategy), each record also holds the reply's code
    (`code`: the tag the model wrote, or the one forced on it) and, when forced, the
    `requested` one; the tag itself is cut from the prediction."""
    test_file, samples = load_test_samples(data, limit)
    ids = [s.sample_id for s in samples]
    output = Path(output)
    info = backend.describe()
    key = settings_key(info, config, strategy)
    requested = {s.sample_id: strategy.requested(s.history_codes) for s in samples} if strategy else {}
    sidecar = meta_file(output)
    if overwrite:
        for stale in (output, sidecar):
            stale.unlink(missing_ok=True)
    done = read_done(output)
    if done and sidecar.is_file():
        old = json.loads(sidecar.read_text(encoding="utf-8")).get("settings")
        if old != key:
            raise MiLlmError(
                f"{output} holds predictions made with other settings ({_diff(old, key)}); "
                "pass --overwrite or choose another -o"
            )
    wanted = set(ids)
    done = {k: v for k, v in done.items() if k in wanted}
    todo = [s for s in samples if s.sample_id not in done]
    if done:
        log.info("resuming: %d of %d samples already predicted in %s", len(done), len(samples), output)
    meta: dict[str, Any] = {
        "settings": key,
        "backend": info,
        "data": str(test_file),
        "samples": len(samples),
        "batch_size": batch_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": False,
    }
    write_json(sidecar, meta)
    # Length-sorted batches pad least (hf); dialogue order lets llama.cpp reuse the cached
    # prefix of the previous round (same system prompt and history).
    order = order or getattr(backend, "preferred_order", "length")
    if order == "length":
        todo.sort(key=lambda s: sum(len(m["content"]) for m in s.messages()))
    generation = {
        **config.to_dict(),
        "backend": info.get("backend"),
        "model": _model_name(info),
        "adapter": info.get("adapter"),
    }
    t0 = time.monotonic()
    n_tokens = n_prompt = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(output)
    with open(output, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            if strategy is not None:
                prompts = [strategy.prefill(s.messages(), requested[s.sample_id]) for s in chunk]
            else:
                prompts = [s.messages() for s in chunk]
            completions = backend.generate(prompts, config)
            if len(completions) != len(chunk):
                raise MiLlmError(
                    f"backend {info.get('backend')} returned {len(completions)} completions for {len(chunk)} prompts"
                )
            for s, c in zip(chunk, completions):
                if strategy is None:
                    rec = _record(s, c.text, generation)
                else:
                    wrote, reply = split_tag(c.text)
                    asked = requested[s.sample_id]
                    rec = _record(s, reply.strip(), generation)
                    rec.update(strategy=strategy.spec, requested=asked, code=asked or wrote)
                rec.update(
                    prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, finish_reason=c.finish_reason
                )
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[s.sample_id] = rec
                n_tokens += c.completion_tokens
                n_prompt += c.prompt_tokens
            f.flush()
            os.fsync(f.fileno())
            if progress:
                progress(len(chunk), sum(c.completion_tokens for c in completions))
    seconds = time.monotonic() - t0
    write_jsonl(output, (done[i] for i in ids))  # whole, in test-set order
    meta.update(
        complete=True,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        generated_now=len(todo),
        seconds=round(seconds, 2),
        completion_tokens=n_tokens,
        prompt_tokens=n_prompt,
        tokens_per_s=round(n_tokens / seconds, 2) if seconds > 0 else None,
    )
    write_json(sidecar, meta)
    return PredictResult(output, len(samples), len(todo), n_tokens, n_prompt, seconds)


def _record(s: Sample, prediction: str, generation: dict[str, Any]) -> dict[str, Any]:
    return {
        "sample_id": s.sample_id,
        "dialogue_id": s.dialogue_id,
        "round": s.round,
        "language": s.language,
        "source": s.source,
        "topic": s.topic,
        "prediction": prediction,
        "reference": s.response,
        "generation": generation,
    }


def _model_name(info: dict[str, Any]) -> Any:
    m = info.get("model")
    return m.get("name") if isinstance(m, dict) else m


def _diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unknown settings"
    keys = [k for k in new if old.get(k) != new.get(k)]
    return "differs in " + ", ".join(keys) if keys else "same"


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Token counts over prediction records (for reports)."""
    toks = [r.get("completion_tokens", 0) or 0 for r in results]
    return {
        "samples": len(results),
        "completion_tokens": sum(toks),
        "stopped": sum(1 for r in results if r.get("finish_reason") == "stop"),
    }
