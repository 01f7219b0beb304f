"""Inner cross-validation chooses the coder's combination; its pieces are checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.evaluate import metrics
from mi_llm.miti.coders.labels import demo_examples
from mi_llm.miti.coders.product import REFLECTIONS, combine
from mi_llm.miti.coders.selection import SelectionConfig, fit_biases, inner_folds, objective, scores
from mi_llm.miti.coders.trained import CoderConfig, TrainedCoder, default_config


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, 6, 300))  # label 5 predicted, never gold
    kappa, macro_f1 = scores(gold, pred, 6)
    assert kappa == pytest.approx(cohen_kappa_score(gold, pred))
    assert macro_f1 == pytest.approx(f1_score(gold, pred, labels=range(5), average="macro"))


def test_biases_lift_a_rare_class_the_argmax_never_picks():
    gold = np.array([0] * 90 + [1] * 10)
    logp = np.log(np.column_stack([np.full(100, 0.6), np.full(100, 0.4)]))
    logp[90:, 1] += 0.3  # the rare class is a bit likelier where it is true, never the argmax
    assert objective(gold, logp) < 0.5
    bias, best = fit_biases(gold, logp, [-0.5, -0.25, 0.0, 0.25, 0.5])
    assert best == pytest.approx(1.0) and bias[1] - bias[0] > 0


def test_combine_weights_experts_and_refines_reflections():
    labels = ["CR", "Q", "SR"]
    a = np.log(np.array([[0.4, 0.2, 0.4]]))
    cfg = CoderConfig(expert_weights={"embed": 0.0})
    out = combine({"ngram": a, "embed": np.log(np.array([[0.1, 0.8, 0.1]]))}, labels, cfg, np.ones(1))
    assert np.allclose(np.exp(out), [[0.4, 0.2, 0.4]])  # weight 0: the embedding expert has no say
    refine = np.log(np.array([[0.9, 0.1]]))  # P(SR | reflection), P(CR | reflection)
    out = combine({"ngram": a}, labels, CoderConfig(), np.ones(1), refine)
    assert REFLECTIONS == ("SR", "CR") and out[0].argmax() == labels.index("SR")
    out = combine({"ngram": a}, labels, CoderConfig(class_bias={"Q": 2.0}), np.ones(1))
    assert out[0].argmax() == labels.index("Q")


def test_inner_folds_split_every_source_by_group():
    ex = demo_examples()
    folds = inner_folds(ex, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(ex)))
    for f in folds:
        groups = {ex[i].group for i in f}
        assert not groups & {ex[i].group for g in folds if g is not f for i in g}
        assert {ex[i].language for i in f} == {"en", "zh"}


def test_selected_coder_records_its_choice_and_codes_unseen_dialogues():
    ex = demo_examples()
    held = set(sorted({e.group for e in ex})[::4])
    cfg = default_config(recipe="ngram")
    cfg.selection = SelectionConfig(
        folds=2, C=[1.0, 4.0], refine=[False, True], source_weights={"demo": [0.5, 1.0], "annomi": [2.0]}
    ).to_dict()
    coder = TrainedCoder.fit([e for e in ex if e.group not in held], cfg)
    rec = coder.info["selection"]
    assert coder.config.selection is None and rec["inner_folds"] == 2
    assert len(rec["candidates"]) == 8 and rec["chosen"] in rec["candidates"]  # no AnnoMI here: not in the grid
    assert {c["source_weights"]["demo"] for c in rec["candidates"]} == {0.5, 1.0}
    assert coder.config.source_weights["demo"] == rec["chosen"]["source_weights"]["demo"]
    assert coder.config.C == rec["chosen"]["C"] and coder.config.refine_reflections == rec["chosen"]["refine"]
    assert rec["inner_with_biases"]["objective"] >= rec["chosen"]["objective"]
    # biases only when they helped inner predictions they were not fitted on
    assert (coder.config.class_bias != {}) <= (rec["biases_cross_fitted_objective"] > rec["chosen"]["objective"])
    assert ("refine" in [x.name for x in coder.experts]) == coder.config.refine_reflections
    test = [e for e in ex if e.group in held]
    m = metrics([e.code for e in test], coder.code_utterances([Item(e.text, e.context, e.language) for e in test]))
    assert m["kappa"] > 0.5, m
