"""Validity of a coder on utterances it never saw: metrics and grouped cross-validation.

Metrics follow the usual utterance-level practice: Cohen's kappa over all labels (null =
"not coded" included, as a coder must also decide what not to code), macro-F1 over the
labels present in the gold standard (null included), and macro-F1 over the MITI codes
only (null left out), plus per-code precision, recall, F1 and support.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mi_llm.miti.codebook import CODES
from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.labels import NULL, Example

log = logging.getLogger(__name__)


def metrics(gold: Sequence[str | None], pred: Sequence[str | None]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support

    g = [x or NULL for x in gold]
    p = [x or NULL for x in pred]
    present = [c for c in (*CODES, NULL) if c in set(g)]
    prec, rec, f1, sup = precision_recall_fscore_support(g, p, labels=present, zero_division=0)
    per = {
        c: {
            "precision": round(float(a), 4),
            "recall": round(float(b), 4),
            "f1": round(float(f), 4),
            "support": int(s),
            "predicted": int(sum(1 for x in p if x == c)),
        }
        for c, a, b, f, s in zip(present, prec, rec, f1, sup)
    }
    codes_only = [per[c]["f1"] for c in present if c != NULL]
    return {
        "n": len(g),
        "kappa": round(float(cohen_kappa_score(g, p)), 4) if len(set(g) | set(p)) > 1 else None,
        "macro_f1": round(float(np.mean(f1)), 4) if len(f1) else None,
        "macro_f1_codes": round(float(np.mean(codes_only)), 4) if codes_only else None,
        "accuracy": round(float(accuracy_score(g, p)), 4),
        "per_code": per,
    }


def _items(examples: Sequence[Example]) -> list[Item]:
    return [Item(e.text, e.context, e.language, e.window) for e in examples]


def grouped_folds(examples: Sequence[Example], n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Fold index per example; groups (transcripts, dialogues) never straddle two folds."""
    rng = np.random.default_rng(seed)
    groups = sorted({e.group for e in examples})
    order = rng.permutation(len(groups))
    fold_of = {groups[i]: k % n_folds for k, i in enumerate(order)}
    return [np.array([i for i, e in enumerate(examples) if fold_of[e.group] == f]) for f in range(n_folds)]


def cross_validate(
    examples: Sequence[Example],
    fit: Callable[[list[Example]], Any],
    n_folds: int = 5,
    extra_train: Sequence[Example] = (),
    seed: int = 0,
    on_fold: Callable[[int, int], None] | None = None,
) -> tuple[list[str | None], dict[str, Any]]:
    """Out-of-fold predictions for `examples` (folds by group); `extra_train` is always in training.

    `fit(train_examples)` returns a coder. Returns (predictions, metrics).
    """
    preds: list[str | None] = [None] * len(examples)
    t0 = time.monotonic()
    folds = grouped_folds(examples, n_folds, seed)
    for k, test_idx in enumerate(folds):
        test = set(test_idx.tolist())
        train = [e for i, e in enumerate(examples) if i not in test] + list(extra_train)
        coder = fit(train)
        out = coder.code_utterances(_items([examples[i] for i in test_idx]))
        for i, c in zip(test_idx, out):
            preds[int(i)] = c
        if on_fold:
            on_fold(k + 1, n_folds)
    m = metrics([e.code for e in examples], preds)
    m["folds"] = n_folds
    m["seconds"] = round(time.monotonic() - t0, 1)
    return preds, m


def held_out(
    train: Sequence[Example], test: Sequence[Example], fit: Callable[[list[Example]], Any]
) -> tuple[list[str | None], dict[str, Any]]:
    """Train on one set, test on another (out-of-domain, cross-lingual)."""
    t0 = time.monotonic()
    coder = fit(list(train))
    preds = coder.code_utterances(_items(test))
    m = metrics([e.code for e in test], preds)
    m["seconds"] = round(time.monotonic() - t0, 1)
    return preds, m
