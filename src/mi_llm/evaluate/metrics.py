"""Automatic metrics of predictions against references: the paper's family and ours.

Library API:
- `compute_metrics(predictions, references, languages=None)` -> dict of corpus figures
  (`paper`: LLaMA-Factory's `bleu-4`, `rouge-1`, `rouge-2`, `rouge-l`; `extended`:
  sacreBLEU, distinct-1/2, lengths, repetition), per language when there are several.
- `evaluate_file(path, output=..., per_sample=...)` reads a predictions file (ours or
  LLaMA-Factory's `generated_predictions.jsonl`), computes, and writes `metrics.json`.

The two families never share a key: `paper` holds only the paper-compatible figures,
`extended` only the better-founded ones. See docs/evaluate.md for the definitions.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.evaluate import sacre
from mi_llm.evaluate.extended import (
    LANGUAGES,
    REPETITION_N,
    DistinctCounter,
    assign_languages,
    repetition_rate,
)
from mi_llm.evaluate.ngrams import char_ids, clipped_matches
from mi_llm.evaluate.paper import (
    PAPER_METRICS,
    PaperScores,
    as_percent,
    bleu4_from_matches,
    jieba_tokens,
    reference_pair_scores,
    rouge_from_tokens,
)

log = logging.getLogger(__name__)

Implementation = Literal["fast", "reference"]
ProgressFn = Callable[[int], None]

PARALLEL_MIN_PAIRS = 2000  # below this, starting workers costs more than it saves
_CHUNK_MIN = 200

DEFINITIONS = {
    "paper": (
        "LLaMA-Factory's SFT prediction metrics, as in the paper: BLEU-4 = nltk sentence_bleu "
        "on characters, smoothing method3; ROUGE-1/2/L = rouge-chinese F on jieba tokens "
        "(0 if either side is blank); each pair's score round(x*100, 4); plain mean over pairs"
    ),
    "extended": (
        "sacrebleu: sacreBLEU corpus BLEU, tokenizer zh (Chinese) / 13a (English), "
        "pooled statistics across languages; distinct-n: distinct / all n-grams over all "
        "predictions; mean-length(-reference): tokens per prediction (reference); "
        f"repetition-rate: mean of 1 - distinct/all {REPETITION_N}-grams within each "
        "prediction; tokens are sacreBLEU's"
    ),
}


class _PairResult(NamedTuple):
    paper: PaperScores
    stats: list[int]  # sacreBLEU segment statistics
    length: int
    ref_length: int
    repetition: float


@dataclass
class _ChunkResult:
    pairs: list[_PairResult]
    distinct: dict[str, DistinctCounter] = field(default_factory=dict)


def _score_chunk(chunk: tuple[list[str], list[str], list[str]]) -> _ChunkResult:
    """Score one slice of pairs with the fast implementations (runs in a worker).

    ROUGE goes pair by pair (jieba); both BLEUs count their n-gram matches for the whole
    slice at once (`ngrams.clipped_matches`), then apply their formulas pair by pair."""
    preds, refs, langs = chunk
    chars = clipped_matches(char_ids(preds), char_ids(refs)).matches.tolist()

    vocab: dict[str, int] = {}
    hyp_tokens, hyp_ids, ref_ids = [], [], []
    for pred, ref, lang in zip(preds, refs, langs):
        name = sacre.TOKENIZERS[lang]
        hyp_tok = sacre.bleu_tokens(pred, name)
        ref_tok = sacre.bleu_tokens(ref, name)
        hyp_tokens.append(hyp_tok)
        hyp_ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in hyp_tok), np.int64, len(hyp_tok)))
        ref_ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in ref_tok), np.int64, len(ref_tok)))
    tokens = clipped_matches(hyp_ids, ref_ids)
    tok_matches, tok_distinct = tokens.matches.tolist(), tokens.distinct_hyp.tolist()

    result = _ChunkResult(pairs=[])
    for i, (pred, ref, lang) in enumerate(zip(preds, refs, langs)):
        r1, r2, rl = rouge_from_tokens(jieba_tokens(pred), jieba_tokens(ref))
        bleu = bleu4_from_matches(chars[i], len(pred), len(ref))
        paper = PaperScores(as_percent(bleu), as_percent(r1), as_percent(r2), as_percent(rl))
        h_len, r_len = len(hyp_ids[i]), len(ref_ids[i])
        totals = [max(0, h_len - n + 1) for n in range(1, sacre.MAX_ORDER + 1)]
        stats = [h_len, r_len, *tok_matches[i], *totals]
        n_rep = h_len - REPETITION_N + 1  # repetition_rate(), from the distinct 4-gram count
        rep = 1.0 - tok_distinct[i][REPETITION_N - 1] / n_rep if n_rep > 0 else 0.0
        result.pairs.append(_PairResult(paper, stats, h_len, r_len, rep))
        result.distinct.setdefault(lang, DistinctCounter()).add(hyp_tokens[i])
    return result


def _warm_up() -> None:
    """Load jieba's dictionary and build the tokenizer tables once, before forking."""
    jieba_tokens("预热")
    for name in sacre.TOKENIZERS.values():
        sacre.tokenizer(name)


def _default_workers(n_pairs: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(2, cpus) if n_pairs >= PARALLEL_MIN_PAIRS else 1


def _score_fast(
    preds: list[str], refs: list[str], langs: list[str], workers: int, progress: ProgressFn | None
) -> tuple[list[_PairResult], dict[str, DistinctCounter]]:
    _warm_up()
    n = len(preds)
    size = max(_CHUNK_MIN, -(-n // (workers * 8))) if workers > 1 else max(_CHUNK_MIN, 1000)
    chunks = [(preds[i : i + size], refs[i : i + size], langs[i : i + size]) for i in range(0, n, size)]
    pairs: list[_PairResult] = []
    distinct: dict[str, DistinctCounter] = {}

    def collect(res: _ChunkResult) -> None:
        pairs.extend(res.pairs)
        for lang, counter in res.distinct.items():
            distinct.setdefault(lang, DistinctCounter()).merge(counter)
        if progress:
            progress(len(res.pairs))

    if workers > 1 and len(chunks) > 1:
        # fork shares the loaded jieba dictionary with the workers (copy-on-write)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(processes=min(workers, len(chunks))) as pool:
            for res in pool.imap(_score_chunk, chunks):
                collect(res)
    else:
        for chunk in chunks:
            collect(_score_chunk(chunk))
    return pairs, distinct


def _score_reference(
    preds: list[str], refs: list[str], langs: list[str], progress: ProgressFn | None
) -> tuple[list[_PairResult], dict[str, DistinctCounter]]:
    """Every figure straight from the libraries (slow; the ground truth for the fast path).

    sacreBLEU statistics come from `BLEU.corpus_score` on each single pair, which is
    what the corpus score sums.
    """
    from sacrebleu.metrics import BLEU

    bleus = {lang: BLEU(tokenize=sacre.TOKENIZERS[lang]) for lang in LANGUAGES}
    pairs: list[_PairResult] = []
    distinct: dict[str, DistinctCounter] = {}
    for i, (pred, ref, lang) in enumerate(zip(preds, refs, langs)):
        name = sacre.TOKENIZERS[lang]
        score = bleus[lang].corpus_score([pred], [[ref]])
        stats = [score.sys_len, score.ref_len, *score.counts, *score.totals]
        hyp_tok = sacre.bleu_tokens(pred, name, fast=False)
        ref_tok = sacre.bleu_tokens(ref, name, fast=False)
        pairs.append(
            _PairResult(reference_pair_scores(pred, ref), stats, len(hyp_tok), len(ref_tok), repetition_rate(hyp_tok))
        )
        distinct.setdefault(lang, DistinctCounter()).add(hyp_tok)
        if progress and (i + 1) % 100 == 0:
            progress(100)
    if progress and len(preds) % 100:
        progress(len(preds) % 100)
    return pairs, distinct


def _mean(values: Sequence[float]) -> float:
    # LLaMA-Factory reports float(np.mean(scores)); the same call keeps the same float.
    return float(np.mean(values)) if len(values) else 0.0


def _summary(rows: list[_PairResult], distinct: DistinctCounter, tokenize: str) -> dict[str, Any]:
    stats = sacre.sum_stats([r.stats for r in rows])
    bleu = sacre.bleu_from_stats(stats)
    d1, d2 = distinct.distinct()
    return {
        "n_pairs": len(rows),
        "paper": {name: _mean([r.paper[i] for r in rows]) for i, name in enumerate(PAPER_METRICS)},
        "extended": {
            "sacrebleu": float(bleu.score),
            "distinct-1": d1,
            "distinct-2": d2,
            "mean-length": _mean([r.length for r in rows]),
            "mean-length-reference": _mean([r.ref_length for r in rows]),
            "repetition-rate": _mean([r.repetition for r in rows]),
        },
        "sacrebleu": {
            "signature": sacre.signature(tokenize),
            "precisions": [float(p) for p in bleu.precisions],
            "bp": float(bleu.bp),
            "sys_len": int(bleu.sys_len),
            "ref_len": int(bleu.ref_len),
        },
    }


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("mi-llm", "jieba", "rouge-chinese", "nltk", "sacrebleu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _check_languages(languages: Sequence[str | None], n: int) -> None:
    if len(languages) != n:
        raise MiLlmError(f"{len(languages)} languages for {n} pairs")
    bad = sorted({repr(lang) for lang in languages if lang is not None and lang not in LANGUAGES})
    if bad:
        raise MiLlmError(f"unsupported language(s) {', '.join(bad)}: expected one of {', '.join(LANGUAGES)}")


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    languages: Sequence[str | None] | None = None,
    *,
    per_sample: bool = False,
    workers: int | None = None,
    implementation: Implementation = "fast",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Corpus metrics of `predictions` against `references` (same length, one pair each).

    languages: "zh" or "en" per pair; None (or a None entry) detects it from the text.
    per_sample: add "per_sample", one dict of scores per pair, in input order.
    workers: processes for the per-pair work (default: 2 when there are enough pairs).
    implementation: "fast" (ours, proven equal in the tests) or "reference" (the libraries
    called as LLaMA-Factory and sacreBLEU call them; slow).
    progress: called with the number of pairs just scored.
    """
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise MiLlmError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise MiLlmError("no prediction/reference pairs to evaluate")
    for what, texts in (("prediction", preds), ("reference", refs)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise MiLlmError(f"{what} {i} is {type(text).__name__}, not text")
    detected = assign_languages(preds, refs)
    if languages is None:
        langs = detected
    else:
        _check_languages(languages, len(preds))
        langs = [given or found for given, found in zip(languages, detected)]

    log.info("scoring %d pairs (%s implementation)", len(preds), implementation)
    if implementation == "reference":
        rows, distinct = _score_reference(preds, refs, langs, progress)
    elif implementation == "fast":
        n_workers = workers if workers is not None else _default_workers(len(preds))
        rows, distinct = _score_fast(preds, refs, langs, max(1, n_workers), progress)
    else:
        raise MiLlmError(f"unknown implementation {implementation!r} (fast | reference)")

    present = [lang for lang in LANGUAGES if lang in distinct]
    pooled = DistinctCounter()
    for lang in present:
        pooled.merge(distinct[lang])
    tokenize = "+".join(sacre.TOKENIZERS[lang] for lang in present)
    summary = _summary(rows, pooled, tokenize)
    result: dict[str, Any] = {
        "n_pairs": summary["n_pairs"],
        "languages": {lang: langs.count(lang) for lang in present},
        "n_empty_predictions": sum(1 for p in preds if not p.strip()),
        **summary,
    }
    if len(present) > 1:
        result["by_language"] = {
            lang: _summary(
                [r for r, row_lang in zip(rows, langs) if row_lang == lang], distinct[lang], sacre.TOKENIZERS[lang]
            )
            for lang in present
        }
    result["definitions"] = DEFINITIONS
    result["implementation"] = implementation
    result["versions"] = _versions()
    if per_sample:
        result["per_sample"] = [_sample_scores(r, lang) for r, lang in zip(rows, langs)]
    return result


def _sample_scores(row: _PairResult, lang: str) -> dict[str, Any]:
    # Sentence-level BLEU needs sacreBLEU's effective order (as its sentence_score advises).
    sentence_bleu = sacre.bleu_from_stats(row.stats, effective_order=True).score
    return {
        "language": lang,
        "paper": row.paper.as_dict(),
        "extended": {
            "sacrebleu": float(sentence_bleu),
            "length": row.length,
            "length-reference": row.ref_length,
            "repetition-rate": row.repetition,
        },
    }


def evaluate_file(
    path: str | Path,
    output: str | Path | None = None,
    *,
    per_sample: str | Path | None = None,
    language: str | None = None,
    workers: int | None = None,
    implementation: Implementation = "fast",
    progress: ProgressFn | None = None,
    on_loaded: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a predictions file; write `output` (metrics.json) and `per_sample` JSONL if given.

    language: "zh" or "en" for every pair; default: the file's `language` field, else detected.
    on_loaded: called with the number of pairs once the file is read (to size a progress bar).
    Returns the metrics (what `output` receives).
    """
    from mi_llm.evaluate.reader import read_predictions
    from mi_llm.io import check_writable, write_json, write_jsonl

    if language is not None and language not in LANGUAGES:
        raise MiLlmError(f"language must be one of {', '.join(LANGUAGES)} (got {language!r})")
    # Outputs are checked before the (slow) scoring, so a bad path costs nothing.
    for target in (output, per_sample):
        if target is not None:
            check_writable(target)
    if output is not None and per_sample is not None and Path(output).resolve() == Path(per_sample).resolve():
        raise MiLlmError(f"{output}: the metrics and the per-sample scores would overwrite each other")
    data = read_predictions(path)
    if on_loaded:
        on_loaded(len(data.predictions))
    langs = [language] * len(data.predictions) if language else data.languages
    metrics = compute_metrics(
        data.predictions,
        data.references,
        langs,
        per_sample=per_sample is not None,
        workers=workers,
        implementation=implementation,
        progress=progress,
    )
    samples = metrics.pop("per_sample", None)
    result = {"input": data.describe(), **data.settings(), **metrics}
    # metrics.json last: it marks a finished evaluation, so a failure leaves neither file new.
    wrote_per_sample = False
    if per_sample is not None and samples is not None:
        existed = Path(per_sample).exists()
        write_jsonl(per_sample, (data.sample_header(i) | s for i, s in enumerate(samples)))
        wrote_per_sample = not existed
    if output is not None:
        try:
            write_json(output, result)
        except BaseException:
            if wrote_per_sample:
                Path(per_sample).unlink(missing_ok=True)  # type: ignore[arg-type]
            raise
    return result
