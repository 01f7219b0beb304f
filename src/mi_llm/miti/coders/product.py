"""The trained coder's experts: fitting one, reading its log-probabilities, and their product.

Shared by `trained.TrainedCoder` (fit, predict) and `selection.select` (inner folds), so that
what is chosen on inner folds is exactly what the coder computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.features import FeatureConfig
from mi_llm.miti.coders.labels import Example

if TYPE_CHECKING:
    from mi_llm.miti.coders.trained import CoderConfig


def expert_configs(config: CoderConfig) -> list[tuple[str, FeatureConfig, float]]:
    """(name, features, C) of each expert the recipe asks for."""
    f = config.features
    out = []
    if f.words or f.chars or f.context:
        out.append(("ngram", replace(f, embeddings=None), config.C))
    if f.embeddings is not None:
        out.append(("embed", replace(f, words=False, chars=False, context=False), config.C_embed))
    if not out:
        raise MiLlmError("the recipe has no text features (words, chars, context or embeddings)")
    return out


def _weights(examples: Sequence[Example], config: CoderConfig, override: dict[str, float] | None = None) -> np.ndarray:
    """A training weight per utterance, from its source (`override` first: one expert's own)."""
    override = override or {}
    return np.array([override.get(e.source, config.source_weights.get(e.source, 1.0)) for e in examples])


def _one_thread() -> Any:
    """BLAS/OpenMP limited to one thread: a sparse linear model gains nothing from more, and
    on a busy machine their spinning threads made fitting several times slower (measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


REFLECTIONS = ("SR", "CR")


def fit_classifier(X: Any, y: np.ndarray, weights: np.ndarray, C: float, config: CoderConfig) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, class_weight=config.class_weight, max_iter=config.max_iter)
    with _one_thread():
        clf.fit(X, y, sample_weight=weights)
    return clf


def aligned_log_proba(clf: Any, X: Any, labels: Sequence[str]) -> np.ndarray:
    """log P(label) in the order of `labels`; a label the classifier never saw gets log(1e-12)."""
    with _one_thread():
        p = clf.predict_proba(X)
    out = np.full((X.shape[0], len(labels)), np.log(1e-12))
    index = {c: k for k, c in enumerate(labels)}
    for j, c in enumerate(clf.classes_):
        if str(c) in index:
            out[:, index[str(c)]] = np.log(np.clip(p[:, j], 1e-12, 1.0))
    return out


def combine(
    log_probas: dict[str, np.ndarray],
    labels: Sequence[str],
    config: CoderConfig,
    language_weights: np.ndarray,
    refine: np.ndarray | None = None,
) -> np.ndarray:
    """The experts' weighted product, normalised: log-probabilities (n x labels).

    The n-gram expert's vote is also scaled by `language_weights` (what it saw of each
    item's language); `refine` (n x 2: log P(SR | reflection), log P(CR | reflection)) is
    added to the SR and CR columns; `config.class_bias` last.
    """
    n = len(language_weights)
    logp = np.zeros((n, len(labels)))
    for name, lp in log_probas.items():
        w = config.expert_weights.get(name, 1.0)
        logp += lp * w * (language_weights[:, None] if name == "ngram" else 1.0)
    if refine is not None and all(r in labels for r in REFLECTIONS):
        for k, r in enumerate(REFLECTIONS):
            logp[:, list(labels).index(r)] += refine[:, k] * language_weights
    if config.class_bias:
        logp += np.array([config.class_bias.get(c, 0.0) for c in labels])
    logp -= logp.max(axis=1, keepdims=True)
    return logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))


def language_weights(languages: Sequence[str], seen: dict[str, int], floor: int) -> np.ndarray:
    """Per item: min(1, training utterances in its language / floor)."""
    floor = max(1, floor)
    return np.array([min(1.0, seen.get(lang, 0) / floor) for lang in languages])


def refine_features(config: CoderConfig) -> FeatureConfig:
    """The SR-vs-CR expert reads the n-gram expert's blocks (no embeddings)."""
    return replace(config.features, embeddings=None)
