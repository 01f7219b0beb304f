"""`mi-llm prefs build`: preference pairs from MITI scores.

For each round sample: K replies sampled from the model (the SFT adapter on its base), each
coded by a MITI coder and scored (`mi_llm.prefs.score`), degenerate ones flagged by the
guards; the best sound reply becomes `chosen`, the worst (or a degenerate one) `rejected`.

Resumable: the sampled replies are appended to `<output>.candidates.jsonl` per batch
(flushed), so an interrupted run keeps what it sampled and a rerun with the same settings
samples only the rounds it lacks. Scoring is cheap and redone each run; the pairs file and
its `<output>.summary.json` are written whole (atomically) at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_llm.build.samples import Sample, read_samples
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import check_writable, repair_torn_tail, write_json
from mi_llm.layout import CANDIDATES_SUFFIX, META_SUFFIX, SUMMARY_SUFFIX, beside
from mi_llm.llm.backends.base import Backend, GenerationConfig
from mi_llm.prefs.config import PrefsConfig
from mi_llm.prefs.pairs import PreferencePair, ScoredReply, write_pairs
from mi_llm.prefs.score import Candidate, choose_pair, score_candidates

log = logging.getLogger(__name__)

SEED_MODULUS = 2**32  # llama.cpp and numpy take 32-bit seeds


def candidates_file(output: Path) -> Path:
    return beside(output, CANDIDATES_SUFFIX)


def summary_file(output: Path) -> Path:
    return beside(output, SUMMARY_SUFFIX)


def settings_file(output: Path) -> Path:
    return beside(output, META_SUFFIX)


@dataclass
class PrefsResult:
    output: Path
    rounds: int
    sampled_now: int  # rounds sampled by this run (the rest were resumed)
    pairs: int
    summary: dict[str, Any]


def generation_config(cfg: PrefsConfig) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed
    )


def sampling_key(backend_info: dict[str, Any], cfg: PrefsConfig) -> dict[str, Any]:
    """What must match for a rerun to reuse the replies already sampled."""
    from mi_llm.evaluate.predict import settings_key

    return {**settings_key(backend_info, generation_config(cfg)), "k": cfg.k}


def read_candidates(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Replies already sampled, by sample id; a torn last line (killed mid-write) is cut first."""
    done: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return done
    repair_torn_tail(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(
                    path, "not a candidates line (invalid JSON); remove the file to resample", lineno
                ) from None
            if not isinstance(obj, dict) or "sample_id" not in obj or not isinstance(obj.get("replies"), list):
                raise InputError(path, "not a candidates line (no sample_id/replies)", lineno)
            done[obj["sample_id"]] = obj["replies"]
    return done


def copies_differ(backend: Backend) -> bool:
    """Whether K copies of a conversation in one generate call come out as K different samples:
    hf seeds once per call, llama.cpp's batched engine per sequence; single-stream llama.cpp,
    openai and vllm seed each request alike, so they would repeat one reply."""
    info = backend.describe()
    return info.get("backend") == "hf" or (info.get("backend") == "llamacpp" and int(info.get("parallel") or 1) > 1)


def sample_replies(
    backend: Backend,
    samples: Sequence[Sample],
    cfg: PrefsConfig,
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, float]:
    """Sample K replies for each of `samples`, appended to `out` per batch; (tokens, seconds).

    Where copies differ (`copies_differ`) one generate call holds K copies of each round (they
    share the prompt's prefix in llama.cpp's slots); elsewhere K calls with K seeds."""
    base = generation_config(cfg)
    together = copies_differ(backend)
    tokens = 0
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(samples), cfg.batch_size):
            chunk = samples[start : start + cfg.batch_size]
            messages = [s.messages() for s in chunk]
            if together:
                calls = [([m for m in messages for _ in range(cfg.k)], base)]
            else:
                calls = [(messages, base.replace(seed=(cfg.seed + k) % SEED_MODULUS)) for k in range(cfg.k)]
            completions: list[Any] = []
            for batch, config in calls:
                got = backend.generate(batch, config)
                if len(got) != len(batch):
                    raise MiLlmError(f"the backend returned {len(got)} completions for {len(batch)} prompts")
                completions += got
            # completion index of round i's j-th reply: copies are adjacent, seeded calls follow each other
            replies: list[list[dict[str, Any]]] = [[] for _ in chunk]
            for n, c in enumerate(completions):
                i = n // cfg.k if together else n % len(chunk)
                cut = c.finish_reason == "length" or c.completion_tokens >= cfg.max_new_tokens
                replies[i].append({"text": c.text, "cut": cut, "tokens": c.completion_tokens})
                tokens += c.completion_tokens
            for s, r in zip(chunk, replies):
                f.write(json.dumps({"sample_id": s.sample_id, "replies": r}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if progress:
                progress(len(chunk))
    return tokens, time.monotonic() - t0


def make_pairs(
    samples: Sequence[Sample], sampled: dict[str, list[dict[str, Any]]], coder: Any, cfg: PrefsConfig
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Score every sampled reply (one coder batch) and keep each round's pair; (pairs, statistics)."""
    candidates: list[Candidate] = []
    for s in samples:
        candidates += [Candidate(r["text"], s.query, s.language, bool(r.get("cut"))) for r in sampled[s.sample_id]]
    scored = score_candidates(coder, candidates, cfg.score)
    pairs: list[PreferencePair] = []
    reasons: Counter[str] = Counter()
    chosen_codes: Counter[str] = Counter()
    rejected_codes: Counter[str] = Counter()
    k = 0
    coder_name = getattr(coder, "name", type(coder).__name__)
    for s in samples:
        n = len(sampled[s.sample_id])
        replies: list[ScoredReply] = scored[k : k + n]
        k += n
        reasons.update(r.degenerate for r in replies if r.degenerate)
        picked = choose_pair(replies, cfg.min_margin, cfg.degenerate_rejected)
        if picked is None:
            continue
        chosen, rejected = picked
        chosen_codes.update(c or "none" for c in chosen.codes)
        rejected_codes.update(c or "none" for c in rejected.codes)
        pairs.append(PreferencePair.of_sample(s, chosen, rejected, coder=coder_name))

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    stats = {
        "rounds": len(samples),
        "replies": len(scored),
        "degenerate": dict(reasons),
        "trimmed": sum(1 for r in scored if r.trimmed),
        "pairs": len(pairs),
        "rounds_without_pair": len(samples) - len(pairs),
        "pairs_with_degenerate_rejected": sum(1 for p in pairs if p.rejected.degenerate),
        "mean_score_all": mean([r.score for r in scored if r.score is not None and not r.degenerate]),
        "mean_score_chosen": mean([p.chosen.score for p in pairs if p.chosen.score is not None]),
        "mean_score_rejected": mean([p.rejected.score for p in pairs if p.rejected.score is not None]),
        "codes_chosen": dict(chosen_codes.most_common()),
        "codes_rejected": dict(rejected_codes.most_common()),
        "coder": coder_name,
    }
    return pairs, stats


def load_rounds(data: str | Path, limit: int | None) -> tuple[Path, list[Sample]]:
    """The round samples of --data (a samples JSONL, or a build folder's training split)."""
    from mi_llm.train.data import resolve_data

    f, _ = resolve_data(data)
    samples = read_samples(f)[:limit] if limit else read_samples(f)
    if not samples:
        raise MiLlmError(f"{f}: no samples")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        raise MiLlmError(f"{f}: duplicate sample ids")
    return f, samples


def build_prefs(
    cfg: PrefsConfig,
    data: str | Path,
    output: str | Path,
    backend_options: dict[str, Any] | None = None,
    coder: Any = None,
    backend: Backend | None = None,
    show_progress: bool = True,
) -> PrefsResult:
    """Sample, score and pair; `coder` / `backend` given (tests) or loaded from `cfg`."""
    output = Path(output)
    check_writable(output, "-o")
    data_file, samples = load_rounds(data, cfg.limit)
    cand_path, meta_path = candidates_file(output), settings_file(output)
    sampled = read_candidates(cand_path)
    todo = [s for s in samples if s.sample_id not in sampled]
    owned = backend is None
    tokens, seconds = 0, 0.0
    if todo or not meta_path.is_file():
        if backend is None:
            from mi_llm.evaluate.predict import PredictBackend

            backend = PredictBackend.choose(cfg.backend, cfg.model, cfg.adapter, backend_options).load()
        try:
            key = sampling_key(backend.describe(), cfg)
            if sampled and meta_path.is_file():
                old = json.loads(meta_path.read_text(encoding="utf-8")).get("settings")
                if old != key:
                    raise MiLlmError(
                        f"{cand_path} holds replies sampled with other settings; remove it (and {output}) "
                        "or choose another -o"
                    )
            write_json(meta_path, {"settings": key, "backend": backend.describe(), "data": str(data_file)})
            if sampled:
                log.info(
                    "resuming: %d of %d rounds already sampled in %s", len(samples) - len(todo), len(samples), cand_path
                )
            from mi_llm.train.progress import counting_progress

            with counting_progress(f"sampling {cfg.k} replies a round", len(todo), enabled=show_progress) as advance:
                tokens, seconds = sample_replies(backend, todo, cfg, cand_path, advance)
        finally:
            if owned:
                backend.close()
        sampled = read_candidates(cand_path)
    if coder is None:
        from mi_llm.miti.coders import load_coder

        coder = load_coder(cfg.coder)
    pairs, stats = make_pairs(samples, sampled, coder, cfg)
    write_pairs(output, pairs)
    summary = {
        "data": str(data_file),
        "settings": cfg.model_dump(),
        **stats,
        "sampled_now": len(todo),
        "sampling_seconds": round(seconds, 2),
        "sampled_tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
    }
    write_json(summary_file(output), summary)
    if not pairs:
        reasons = ", ".join(f"{n} {why}" for why, n in stats["degenerate"].items()) or "none"
        raise MiLlmError(
            f"{output}: no preference pair from {len(samples)} rounds (degenerate replies: {reasons}; "
            f"see {summary_file(output)}); sample more replies (-k), longer ones (--max-new-tokens) "
            "or lower --min-margin"
        )
    return PrefsResult(output, len(samples), len(todo), len(pairs), summary)
