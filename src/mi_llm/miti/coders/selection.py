"""Choosing a coder's hyper-parameters on the training data alone: inner cross-validation.

`select(examples, config, embeddings)` splits the examples by group (transcript, dialogue)
into `SelectionConfig.folds` inner folds, fits every expert at every C and every source
weighting of the grid on each inner training part, and keeps the out-of-fold
log-probabilities. On them it then chooses, without refitting: the source weights, each
expert's C, the embedding expert's weight in the product (0 = the n-gram expert alone),
whether the SR-vs-CR expert re-decides reflections (coarse-then-fine), and an additive
bias per label (calibration of the class priors: rare codes lose macro-F1 otherwise;
kept only if biases fitted on two inner folds' predictions improve the third's, in
turn). The objective is the mean of Cohen's kappa and macro-F1, the two figures the
coder is graded on.

Because the choice is part of training, cross-validating `TrainedCoder.fit` with a
selection config is a nested cross-validation: the outer test folds never choose anything
(benchmarks/bench_coder_nested.py).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mi_llm.miti.coders.features import Featurizer
from mi_llm.miti.coders.labels import NULL, Example

if TYPE_CHECKING:
    from mi_llm.miti.coders.trained import CoderConfig


@dataclass
class SelectionConfig:
    folds: int = 3
    # the n-gram expert's C: 4 (1 was never chosen: 0 of 5 outer folds, nested run of 2026-12-06)
    C: list[float] = field(default_factory=lambda: [4.0])
    # source -> training weights to try (every combination): the demo corpus codes written
    # utterances with codes AnnoMI lacks, so how much it should count is chosen here
    source_weights: dict[str, list[float]] = field(default_factory=lambda: {"demo": [0.3, 1.0]})
    C_embed: list[float] = field(default_factory=lambda: [1.0, 3.0])
    embed_weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5])
    refine: list[bool] = field(default_factory=lambda: [False, True])
    biases: bool = True
    bias_grid: list[float] = field(default_factory=lambda: [round(x, 2) for x in np.arange(-1.5, 1.51, 0.25)])
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionConfig:
        return cls(**d)


def scores(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> tuple[float, float]:
    """(Cohen's kappa, macro-F1 over the labels present in `gold`) of label indices; fast."""
    cm = np.bincount(gold * n_labels + pred, minlength=n_labels * n_labels).reshape(n_labels, n_labels)
    n = cm.sum()
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / (n * n)
    kappa = (po - pe) / (1 - pe) if pe < 1 else 0.0
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(kappa), float(f1[support > 0].mean())


def objective(gold: np.ndarray, logp: np.ndarray) -> float:
    kappa, macro_f1 = scores(gold, logp.argmax(1), logp.shape[1])
    return (kappa + macro_f1) / 2


def fit_biases(gold: np.ndarray, logp: np.ndarray, grid: Sequence[float], passes: int = 2) -> tuple[np.ndarray, float]:
    """Per-label additive biases by coordinate ascent on the objective."""
    bias = np.zeros(logp.shape[1])
    best = objective(gold, logp)
    for _ in range(passes):
        improved = False
        for k in range(logp.shape[1]):
            keep = bias[k]
            for b in grid:
                bias[k] = b
                v = objective(gold, logp + bias)
                if v > best + 1e-9:
                    best, keep, improved = v, b, True
            bias[k] = keep
        if not improved:
            break
    return bias, best


def _key(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in sorted(weights.items()))


def inner_folds(examples: Sequence[Example], n_folds: int, seed: int) -> list[np.ndarray]:
    from mi_llm.miti.coders.evaluate import grouped_folds

    # each source split on its own, so that every inner fold holds some of each
    fold = np.zeros(len(examples), dtype=int)
    for source in sorted({e.source for e in examples}):
        idx = [i for i, e in enumerate(examples) if e.source == source]
        for k, part in enumerate(grouped_folds([examples[i] for i in idx], n_folds, seed)):
            fold[[idx[j] for j in part]] = k
    return [np.flatnonzero(fold == k) for k in range(n_folds)]


def select(
    examples: Sequence[Example],
    config: CoderConfig,
    embeddings: np.ndarray | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[CoderConfig, dict[str, Any]]:
    """The config with C, expert weights, refinement and biases chosen on inner folds, and a record."""
    from mi_llm.miti.coders.product import (
        REFLECTIONS,
        _weights,
        aligned_log_proba,
        combine,
        expert_configs,
        fit_classifier,
        language_weights,
        refine_features,
    )

    t0 = time.monotonic()
    sel = SelectionConfig.from_dict(config.selection or {})
    texts = [e.text for e in examples]
    contexts = [e.context for e in examples]
    y = np.array([e.code or NULL for e in examples])
    labels = sorted(set(y.tolist()))
    gold = np.array([labels.index(c) for c in y])
    present = {e.source for e in examples}
    grid_sources = [src for src in sorted(sel.source_weights) if src in present]
    settings = [dict(zip(grid_sources, ws)) for ws in itertools.product(*(sel.source_weights[s] for s in grid_sources))]
    weights_of = {
        _key(ws): _weights(examples, replace(config, source_weights={**config.source_weights, **ws})) for ws in settings
    }
    specs = expert_configs(config)
    grids = {"ngram": sel.C, "embed": sel.C_embed}
    folds = inner_folds(examples, sel.folds, sel.seed)
    n = len(examples)
    # out-of-fold log-probabilities: (expert, C, source weights) -> n x labels; the refine expert's: n x 2
    oof: dict[tuple[str, float, str], np.ndarray] = {}
    oof_refine: dict[str, np.ndarray] = {}
    lang_w = np.zeros(n)
    steps = sel.folds * len(settings) * (sum(len(grids.get(name, [0])) for name, _, _ in specs) + 1)
    done = 0
    for test_idx in folds:
        train_idx = np.setdiff1d(np.arange(n), test_idx)
        tr_texts, te_texts = [texts[i] for i in train_idx], [texts[i] for i in test_idx]
        tr_ctx, te_ctx = [contexts[i] for i in train_idx], [contexts[i] for i in test_idx]
        seen = Counter(examples[i].language for i in train_idx)
        lang_w[test_idx] = language_weights(
            [examples[i].language for i in test_idx], seen, config.min_language_examples
        )
        for name, fconf, C in specs:
            feat = Featurizer(fconf)
            use = fconf.embeddings is not None
            e_tr = embeddings[train_idx] if use and embeddings is not None else None
            e_te = embeddings[test_idx] if use and embeddings is not None else None
            X_tr = feat.fit_transform(tr_texts, tr_ctx, e_tr)
            X_te = feat.transform(te_texts, te_ctx, e_te)
            for wk, weights in weights_of.items():
                for c in grids.get(name, [C]):
                    clf = fit_classifier(X_tr, y[train_idx], weights[train_idx], c, config)
                    oof.setdefault((name, c, wk), np.zeros((n, len(labels))))[test_idx] = aligned_log_proba(
                        clf, X_te, labels
                    )
                    done += 1
                    if progress:
                        progress("selection", done, steps)
        refl = train_idx[np.isin(y[train_idx], REFLECTIONS)]
        refine_ok = True in sel.refine and set(y[refl].tolist()) == set(REFLECTIONS)
        if refine_ok:
            feat = Featurizer(refine_features(config))
            X_tr = feat.fit_transform([texts[i] for i in refl], [contexts[i] for i in refl])
            X_te = feat.transform(te_texts, te_ctx)
        for wk, weights in weights_of.items():
            if refine_ok:
                clf = fit_classifier(X_tr, y[refl], weights[refl], config.C_refine, config)
                oof_refine.setdefault(wk, np.zeros((n, 2)))[test_idx] = aligned_log_proba(clf, X_te, REFLECTIONS)
            done += 1
            if progress:
                progress("selection", done, steps)

    names = [name for name, _, _ in specs]
    has_embed = "embed" in names
    candidates: list[dict[str, Any]] = []
    for ws, Cn, Ce, w, ref in itertools.product(
        settings,
        sel.C if "ngram" in names else [None],
        sel.C_embed if has_embed else [None],
        sel.embed_weights if has_embed and "ngram" in names else [1.0],
        sel.refine,
    ):
        if has_embed and w == 0 and Ce != sel.C_embed[0]:
            continue  # the embedding expert is off: its C does not matter
        if ref and _key(ws) not in oof_refine:
            continue  # too few reflections to train the SR-vs-CR expert
        trial = replace(config, expert_weights={"embed": w} if has_embed else {}, refine_reflections=ref, class_bias={})
        lps = {}
        if Cn is not None:
            lps["ngram"] = oof[("ngram", Cn, _key(ws))]
        if Ce is not None:
            lps["embed"] = oof[("embed", Ce, _key(ws))]
        logp = combine(lps, labels, trial, lang_w, oof_refine[_key(ws)] if ref else None)
        kappa, f1 = scores(gold, logp.argmax(1), len(labels))
        candidates.append(
            {
                "source_weights": ws,
                "C": Cn,
                "C_embed": Ce,
                "embed_weight": w if has_embed else None,
                "refine": ref,
                "kappa": round(kappa, 4),
                "macro_f1": round(f1, 4),
                "objective": round((kappa + f1) / 2, 4),
                "_logp": logp,
            }
        )
    best = max(candidates, key=lambda c: c["objective"])
    bias = np.zeros(len(labels))
    after = best["objective"]
    cross_fitted = None
    if sel.biases:
        # Biases are kept only if they help predictions they were not fitted on: fitted on
        # two inner folds' out-of-fold predictions, graded on the third, in turn.
        fold_of = np.zeros(n, dtype=int)
        for k, idx in enumerate(folds):
            fold_of[idx] = k
        held = best["_logp"].copy()
        for k in range(len(folds)):
            rest = fold_of != k
            b, _ = fit_biases(gold[rest], best["_logp"][rest], sel.bias_grid)
            held[~rest] += b
        cross_fitted = objective(gold, held)
        if cross_fitted > best["objective"]:
            bias, after = fit_biases(gold, best["_logp"], sel.bias_grid)
    kappa_b, f1_b = scores(gold, (best["_logp"] + bias).argmax(1), len(labels))
    chosen = replace(
        config,
        selection=None,
        source_weights={**config.source_weights, **best["source_weights"]},
        C=best["C"] if best["C"] is not None else config.C,
        C_embed=best["C_embed"] if best["C_embed"] is not None else config.C_embed,
        expert_weights={"embed": best["embed_weight"]} if has_embed else {},
        refine_reflections=best["refine"],
        class_bias={c: float(b) for c, b in zip(labels, bias) if b != 0},
    )
    if has_embed and best["embed_weight"] == 0:
        # the embedding expert lost on the inner folds: the coder does without it (and its model)
        chosen = replace(chosen, features=replace(chosen.features, embeddings=None), expert_weights={})
    record = {
        "inner_folds": sel.folds,
        "grid": sel.to_dict(),
        "candidates": [{k: v for k, v in c.items() if k != "_logp"} for c in candidates],
        "chosen": {k: v for k, v in best.items() if k != "_logp"},
        "biases": {c: float(b) for c, b in zip(labels, bias)},
        "biases_cross_fitted_objective": None if cross_fitted is None else round(cross_fitted, 4),
        "inner_with_biases": {"kappa": round(kappa_b, 4), "macro_f1": round(f1_b, 4), "objective": round(after, 4)},
        "seconds": round(time.monotonic() - t0, 1),
    }
    return chosen, record
