"""Training and cross-validating the learned crisis detector (`mi-llm safety train`).

`fit` holds a validation split out of the training rows (by group: one dialogue's turns
stay together), fits there, chooses the thresholds on the validation split (recall first:
the highest threshold that keeps `recall_target`, raised where it would flag more than
`max_fpr` of the non-crisis rows; then the lowest at which precision reaches
`high_precision`, for the high level). The model shipped is the one the thresholds were
chosen for (refitting on every row is an option).

`cross_validate` holds out one source at a time (a PsySUICIDE data source, SAD, C-SSRS, the
written sets), so no figure comes from a source the model or its thresholds were fitted on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.serve.safety.learned import FeatureConfig, LearnedDetector
from mi_llm.serve.safety.sources import TALK_TRAINED, LabelledText

log = logging.getLogger(__name__)


# C-SSRS labels users, not posts: trained on, its at-risk users' everyday posts taught the
# model that talking about one's life is a crisis (70% of AnnoMI client turns flagged).
# It is kept for evaluation, per user.
NOT_TRAINED_ON = ("cssrs",)


@dataclass
class TrainConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # inverse L2 strength of both regressions; validation recall at the FPR cap was 0.77 (C=1),
    # 0.81 (4) and 0.83 (16) on the shipped data (validation split of `fit`, seed 0)
    c: float = 16.0
    recall_target: float = 0.95  # on the validation split, for `threshold`...
    max_fpr: float = 0.03  # ...unless that flags more of the validation split's non-crisis rows
    high_precision: float = 0.90  # on the validation split, for `high_threshold`
    crisis_weight: float = 0.25  # the crisis rows' share of the total weight (0.5: balanced)
    validation: float = 0.2  # share of groups held out to choose the thresholds
    balance_sources: bool = True  # every source weighs the same in total, whatever its size
    seed: int = 0


def source_weights(rows: Sequence[LabelledText]) -> np.ndarray:
    """Each source's rows share one unit of weight, scaled so the mean weight is 1."""
    counts = Counter(r.source for r in rows)
    w = np.array([1.0 / counts[r.source] for r in rows])
    return w * (len(rows) / w.sum())


def training_weights(rows: Sequence[LabelledText], cfg: TrainConfig) -> np.ndarray:
    """Per-row weights: sources balanced (`cfg.balance_sources`), then the crisis rows given
    `cfg.crisis_weight` of the total. Balanced (0.5), a message with nothing to go on
    ("Mm-hmm") scored near one half, above the threshold."""
    w = source_weights(rows) if cfg.balance_sources else np.ones(len(rows))
    pos = np.array([r.crisis for r in rows], dtype=bool)
    share = cfg.crisis_weight
    return w * np.where(pos, share / w[pos].sum(), (1 - share) / w[~pos].sum()) * len(rows)


def _fit_models(rows: Sequence[LabelledText], cfg: TrainConfig) -> tuple[Any, Any, Any]:
    from sklearn.linear_model import LogisticRegression

    vec = cfg.features.vectorizer()
    x = vec.fit_transform([r.text for r in rows])
    y = np.array([r.crisis for r in rows], dtype=int)
    if y.min() == y.max():
        raise MiLlmError("training data needs both crisis and non-crisis rows")
    crisis = LogisticRegression(C=cfg.c, max_iter=2000).fit(x, y, sample_weight=training_weights(rows, cfg))
    typed = [i for i, r in enumerate(rows) if r.crisis and r.fine]
    labels = sorted({rows[i].subcategory for i in typed})
    types = None
    if len(labels) >= 2:
        types = LogisticRegression(C=cfg.c, max_iter=2000, class_weight="balanced").fit(
            x[typed], [rows[i].subcategory for i in typed]
        )
    return vec, crisis, types


def _detector(models: tuple[Any, Any, Any], cfg: TrainConfig, threshold: float, high: float) -> LearnedDetector:
    vec, crisis, types = models
    n = len(vec.vocabulary_)
    if types is None:  # one type only (a user's own small set): every crisis gets it
        label = "active_ideation"
        type_names, type_coef, type_icpt = [label], np.zeros((1, n)), np.zeros(1)
    else:
        type_names = [str(c) for c in types.classes_]
        type_coef, type_icpt = types.coef_, types.intercept_
        if len(type_names) == 2:  # sklearn keeps one row for two classes
            type_coef = np.vstack([-type_coef[0] / 2, type_coef[0] / 2])
            type_icpt = np.array([-type_icpt[0] / 2, type_icpt[0] / 2])
    return LearnedDetector(
        vec,
        crisis.coef_[0],
        float(crisis.intercept_[0]),
        type_names,
        type_coef,
        type_icpt,
        threshold,
        high,
        cfg.features,
    )


def choose_thresholds(
    scores: np.ndarray, gold: np.ndarray, recall_target: float, high_precision: float, max_fpr: float = 1.0
) -> tuple[float, float]:
    """(threshold, high_threshold) from validation scores; see the module doc."""
    pos = np.sort(scores[gold])
    if not len(pos):
        raise MiLlmError("the validation split has no crisis rows: add labelled crisis rows")
    # keep recall_target of the positives at or above the threshold
    k = int(np.floor((1.0 - recall_target) * len(pos) + 1e-9))  # 1 - 0.8 is 0.1999...: not one row fewer
    threshold = float(pos[k])
    neg = np.sort(scores[~gold])[::-1]
    allowed = int(np.floor(max_fpr * len(neg) + 1e-9))  # non-crisis rows that may score at or above it
    if allowed < len(neg):
        threshold = max(threshold, float(np.nextafter(neg[allowed], np.inf)))
    high = 1.0
    for t in sorted({float(s) for s in scores[scores >= threshold]}):
        flagged = scores >= t
        if gold[flagged].mean() >= high_precision:
            high = t
            break
    return threshold, max(high, threshold)


def group_split(rows: Sequence[LabelledText], share: float, seed: int) -> tuple[list[int], list[int]]:
    groups = sorted({r.group for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(groups, size=max(1, int(round(share * len(groups)))), replace=False).tolist())
    train = [i for i, r in enumerate(rows) if r.group not in held]
    val = [i for i, r in enumerate(rows) if r.group in held]
    return train, val


def fit(
    rows: Sequence[LabelledText],
    cfg: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    refit: bool = False,
) -> LearnedDetector:
    """The model fitted without the validation split, with thresholds chosen on it. With
    refit=True, refit on all rows with those thresholds (more data, but the thresholds were
    chosen for another model: refit on all rows, "one two three" went from 0.21 to 0.40)."""
    cfg = cfg or TrainConfig()
    rows = [r for r in rows if r.trainable]
    if sum(r.crisis for r in rows) < 4 or sum(not r.crisis for r in rows) < 4:
        raise MiLlmError("training needs at least 4 crisis and 4 non-crisis rows")
    say = progress or (lambda _msg: None)
    train_idx, val_idx = group_split(rows, cfg.validation, cfg.seed)
    say(f"fitting on {len(train_idx)} rows to choose the thresholds on {len(val_idx)}")
    probe_models = _fit_models([rows[i] for i in train_idx], cfg)
    probe = _detector(probe_models, cfg, 0.5, 0.5)
    val = [rows[i] for i in val_idx]
    scores = probe.scores([r.text for r in val])
    gold = np.array([r.crisis for r in val])
    threshold, high = choose_thresholds(scores, gold, cfg.recall_target, cfg.high_precision, cfg.max_fpr)
    flagged = scores >= threshold
    if refit:
        say(f"refitting on all {len(rows)} rows")
    det = _detector(_fit_models(rows, cfg) if refit else probe_models, cfg, threshold, high)
    det.info = {
        "trained": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": dict(sorted(Counter(r.source for r in rows).items())),
        "crisis_rows": sum(r.crisis for r in rows),
        "fitted_rows": len(rows) if refit else len(train_idx),  # the rest chose the thresholds
        "config": {k: v for k, v in cfg.__dict__.items() if k != "features"},
        "validation": {
            "rows": len(val),
            "crisis": int(gold.sum()),
            "recall": round(float(flagged[gold].mean()), 4) if gold.any() else None,
            "precision": round(float(gold[flagged].mean()), 4) if flagged.any() else None,
        },
    }
    return det


@dataclass
class Scored:
    row: LabelledText
    score: float
    type: str
    threshold: float  # of the fold's detector
    high_threshold: float

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold


def _score_folds(
    rows: Sequence[LabelledText],
    fold_of: Callable[[LabelledText], str | int],
    cfg: TrainConfig | None,
    progress: Callable[[str], None] | None,
    eval_only: Sequence[str],
    train_share: float = 1.0,
    share_seed: int = 0,
) -> list[Scored]:
    """Every row scored by a detector (and thresholds) fitted on the rows of the other folds
    (never on a source in `eval_only`); with `train_share` < 1, on that share of their groups
    (drawn with `share_seed`: a learning curve)."""
    cfg = cfg or TrainConfig()
    out: list[Scored] = []
    for fold in sorted({fold_of(r) for r in rows}, key=str):
        test = [r for r in rows if fold_of(r) == fold]
        if progress:
            progress(f"held out {fold}: {len(test)} rows")
        train = [r for r in rows if fold_of(r) != fold and r.source not in eval_only]
        if train_share < 1.0:
            kept, _ = group_split(train, 1.0 - train_share, share_seed)
            train = [train[i] for i in kept]
        det = fit(train, cfg)
        for r, (s, t) in zip(test, det.predict([r.text for r in test])):
            out.append(Scored(r, s, t, det.threshold, det.high_threshold))
    return out


def cross_validate(
    rows: Sequence[LabelledText],
    cfg: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    eval_only: Sequence[str] = (),
) -> list[Scored]:
    """Leave one source out: every row scored by a detector (and thresholds) fitted without
    any row of its source. Rows that are not trainable (exploring, indicator) are scored too,
    to be reported apart; sources in `eval_only` are never trained on."""
    return _score_folds(rows, lambda r: r.source, cfg, progress, eval_only)


def cross_validate_groups(
    rows: Sequence[LabelledText],
    folds: int = 5,
    cfg: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    eval_only: Sequence[str] = (),
    seed: int = 0,
    train_share: float = 1.0,
    share_seed: int = 0,
) -> list[Scored]:
    """K folds of groups drawn across all sources: every row scored by a detector (and
    thresholds) fitted on the other folds, which hold the rest of its own source. What to
    expect on new data from the sources trained on (e.g. a source's own test split), where
    `cross_validate` says what to expect on a source never seen. `train_share` < 1 trains
    each fold's detector on that share of the other folds' groups (a learning curve)."""
    groups = sorted({r.group for r in rows})
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[i]: k % folds for k, i in enumerate(order)}
    if not 0.0 < train_share <= 1.0:
        raise MiLlmError(f"train_share must be in (0, 1], got {train_share}")
    return _score_folds(
        rows, lambda r: f"fold {fold_of[r.group] + 1}/{folds}", cfg, progress, eval_only, train_share, share_seed
    )


def training_rows(
    data: Sequence[str | Path] = (),
    shared: str | Path | None = None,
    bundled: bool = True,
    exclude: Sequence[str] = NOT_TRAINED_ON,
    talk: Sequence[str] = TALK_TRAINED,
) -> list[LabelledText]:
    """The user's labelled files (one source each), the project's written sets
    (evaluate.TRAINING_SPLITS, not the held-out set) and the public sets under `shared`
    but the sources in `exclude`, and client turns of the `talk` corpora beside it as negatives."""
    from mi_llm.serve.safety.evaluate import TRAINING_SPLITS, bundled_set, read_labelled
    from mi_llm.serve.safety.sources import crisis_dir, from_labelled, read_client_talk, read_shared

    rows: list[LabelledText] = []
    for path in data:
        rows += from_labelled(read_labelled(path), f"user:{Path(path).name}")
    if bundled:
        written = [r for s in TRAINING_SPLITS for lang in ("zh", "en") for r in read_labelled(bundled_set(s, lang))]
        rows += from_labelled(written, "written")
    if shared is not None:
        rows += [r for r in read_shared(shared) if r.source not in exclude]
        if talk:
            rows += read_client_talk(crisis_dir(shared).parent, talk)
    if not rows:
        raise MiLlmError("nothing to train on: give --data files, or keep the bundled or public sets")
    return rows
