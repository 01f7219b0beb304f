"""Choosing and grading the client-talk recipe by nested cross-validation by transcript,
and retraining the coder (`train_client_coder`, what `mi-llm miti train-client-coder` runs).

Inner folds choose (the n-gram blocks and C, the embedding expert's C, the experts'
weights in the product, the per-class bias for macro-F1); outer folds only grade. Every
candidate's out-of-fold log-probabilities are computed once per inner fold, so the
products and biases are searched without refitting. Each `family` (a subset of the
candidates: utterance n-grams only, + the counselor's previous turn, ...) is chosen and
graded the same way, so every row of the table is an honest unseen-transcript figure.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.miti.coders.client_talk import (
    TALK_TYPES,
    ClientExample,
    ClientItem,
    ClientTalkCoder,
    ClientTalkConfig,
    _scaled,
    aligned_log_proba,
    combine,
    fit_embed_expert,
    fit_ngram_expert,
)
from mi_llm.miti.coders.encoder import EncoderConfig, EncoderExpert

log = logging.getLogger(__name__)

# The search space. n-gram expert: (previous_weight, history_weight, C); embedding expert: C.
# Kept small for a shared 2-core CPU (an n-gram fit takes 5-10 s there); the n-gram C stays at 1.
NGRAM_GRID = [(0.0, 0.0, 1.0), (0.5, 0.0, 1.0), (1.0, 0.0, 1.0), (0.5, 0.25, 1.0)]
EMBED_GRID = [0.1, 0.5, 2.0]
EMBED_WEIGHTS = [0.5, 1.0, 2.0]  # the embedding expert's exponent when both experts vote
BIAS_GRID = np.round(np.arange(-1.0, 2.01, 0.1), 2)  # log-offsets of change and sustain (neutral 0)

# Families: which candidates a row may choose among.
FAMILIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "ngram: utterance": lambda c: c["embed"] is None and c["ngram"][0] == 0 and c["ngram"][1] == 0,
    "ngram: + previous": lambda c: c["embed"] is None and c["ngram"] is not None and c["ngram"][1] == 0,
    "ngram: + previous + history": lambda c: c["embed"] is None and c["ngram"] is not None,
    "embed only": lambda c: c["ngram"] is None,
    "product, no bias": lambda c: not c["tune_bias"],
    "product (chosen)": lambda c: True,
}


def transcript_folds(examples: Sequence[ClientExample], n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Indices of each fold; a transcript never straddles two folds."""
    rng = np.random.default_rng(seed)
    groups = sorted({e.group for e in examples})
    order = rng.permutation(len(groups))
    fold_of = {groups[i]: k % n_folds for k, i in enumerate(order)}
    return [np.array([i for i, e in enumerate(examples) if fold_of[e.group] == f], dtype=int) for f in range(n_folds)]


def _y(examples: Sequence[ClientExample], idx: np.ndarray) -> np.ndarray:
    return np.array([TALK_TYPES.index(examples[i].talk) for i in idx])


def _items(examples: Sequence[ClientExample], idx: np.ndarray) -> list[ClientItem]:
    return [ClientItem(examples[i].text, examples[i].previous, examples[i].history, examples[i].language) for i in idx]


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int = len(TALK_TYPES)) -> float:
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[cm.sum(1) > 0].mean())


def talk_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=list(TALK_TYPES), zero_division=0)
    return {
        "n": len(gold),
        "kappa": round(float(cohen_kappa_score(gold, pred)), 4),
        "macro_f1": round(float(np.mean(f)), 4),
        "accuracy": round(float(accuracy_score(gold, pred)), 4),
        "per_class": {
            t: {
                "precision": round(float(a), 4),
                "recall": round(float(b), 4),
                "f1": round(float(c), 4),
                "support": int(d),
                "predicted": int(sum(1 for x in pred if x == t)),
            }
            for t, a, b, c, d in zip(TALK_TYPES, p, r, f, s)
        },
    }


def tune_bias(scores: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float]:
    """Log-offsets of change and sustain (neutral fixed at 0) that maximise macro-F1 here."""
    best = (-1.0, 0.0, 0.0)
    ci, si = TALK_TYPES.index("change"), TALK_TYPES.index("sustain")
    for bc in BIAS_GRID:
        for bs in BIAS_GRID:
            s = scores.copy()
            s[:, ci] += bc
            s[:, si] += bs
            f = macro_f1(y, s.argmax(1))
            if f > best[0] + 1e-9:
                best = (f, float(bc), float(bs))
    return {"change": best[1], "sustain": best[2]}, best[0]


def _config(cand: dict[str, Any], embed_cfg: dict[str, Any] | None) -> ClientTalkConfig:
    c = ClientTalkConfig(embeddings=None, ngram_weight=0.0, embed_weight=0.0)
    if cand["ngram"] is not None:
        p, h, C = cand["ngram"]
        c = replace(c, previous_weight=p, history_weight=h, C=C, ngram_weight=1.0)
    if cand["embed"] is not None:
        c = replace(c, embeddings=embed_cfg, C_embed=cand["embed"], embed_weight=cand["embed_weight"])
    return replace(c, bias=dict(cand.get("bias", {})))


def candidates(with_embed: bool) -> list[dict[str, Any]]:
    out = []
    for tune in (False, True):
        for ng in NGRAM_GRID:
            out.append({"ngram": ng, "embed": None, "embed_weight": 0.0, "tune_bias": tune})
        if with_embed:
            for ce in EMBED_GRID:
                out.append({"ngram": None, "embed": ce, "embed_weight": 1.0, "tune_bias": tune})
            for ng, ce, w in itertools.product(NGRAM_GRID, EMBED_GRID, EMBED_WEIGHTS):
                out.append({"ngram": ng, "embed": ce, "embed_weight": w, "tune_bias": tune})
    return out


@dataclass
class ExpertOOF:
    """Out-of-fold log-probabilities of every expert candidate over some examples."""

    ngram: dict[tuple, np.ndarray]
    embed: dict[float, np.ndarray]


def oof_log_probas(
    examples: Sequence[ClientExample],
    idx: np.ndarray,
    embeddings: np.ndarray | None,
    n_folds: int,
    seed: int,
    ngram_grid: Sequence[tuple] = NGRAM_GRID,
    embed_grid: Sequence[float] = EMBED_GRID,
    on_fit: Callable[[], None] | None = None,
) -> ExpertOOF:
    sub = [examples[i] for i in idx]
    folds = transcript_folds(sub, n_folds, seed)
    n = len(sub)
    ngram = {g: np.zeros((n, len(TALK_TYPES))) for g in ngram_grid}
    embed = {c: np.zeros((n, len(TALK_TYPES))) for c in (embed_grid if embeddings is not None else [])}
    all_idx = np.arange(n)
    for test in folds:
        train = np.setdiff1d(all_idx, test)
        tr_items, te_items = _items(sub, train), _items(sub, test)
        y_tr = [sub[i].talk for i in train]
        for g in ngram_grid:
            cfg = ClientTalkConfig(previous_weight=g[0], history_weight=g[1], C=g[2])
            feat, clf = fit_ngram_expert(tr_items, y_tr, cfg)
            ngram[g][test] = aligned_log_proba(clf, feat.transform(te_items))
            if on_fit:
                on_fit()
        for ce in embed:
            E = embeddings[idx]  # type: ignore[index]
            scaler, clf = fit_embed_expert(E[train], y_tr, ClientTalkConfig(C_embed=ce))
            embed[ce][test] = aligned_log_proba(clf, _scaled(scaler, E[test]))
            if on_fit:
                on_fit()
    return ExpertOOF(ngram, embed)


def choose(
    oof: ExpertOOF,
    y: np.ndarray,
    cands: Sequence[dict[str, Any]],
    family: Callable[[dict[str, Any]], bool] = lambda c: True,
) -> tuple[dict[str, Any], float]:
    """The candidate of `family` with the best out-of-fold macro-F1 (its bias tuned there when it tunes one)."""
    best: tuple[float, dict[str, Any]] | None = None
    for c in cands:
        if not family(c):
            continue
        cfg = ClientTalkConfig(embed_weight=c["embed_weight"], ngram_weight=1.0 if c["ngram"] else 0.0)
        s = combine(
            oof.ngram[c["ngram"]] if c["ngram"] else None,
            oof.embed[c["embed"]] if c["embed"] is not None else None,
            cfg,
        )
        if c["tune_bias"]:
            bias, f = tune_bias(s, y)
        else:
            bias, f = {}, macro_f1(y, s.argmax(1))
        if best is None or f > best[0] + 1e-9:
            best = (f, {**c, "bias": bias})
    assert best is not None, "a family without candidates"
    return best[1], best[0]


def baseline_fit_predict(train: Sequence[ClientExample], test: Sequence[ClientExample]) -> list[str]:
    """The issue's baseline: utterance-only word 1-2-gram TF-IDF + logistic regression (balanced)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    X = vec.fit_transform([e.text for e in train])
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit(X, [e.talk for e in train])
    return [str(p) for p in clf.predict(vec.transform([e.text for e in test]))]


def fit_candidate(
    examples: Sequence[ClientExample],
    idx: np.ndarray,
    cand: dict[str, Any],
    embeddings: np.ndarray | None,
    embed_cfg: dict[str, Any] | None,
) -> ClientTalkCoder:
    train = [examples[i] for i in idx]
    chosen = embeddings[idx] if cand["embed"] is not None and embeddings is not None else None
    return ClientTalkCoder.fit(train, _config(cand, embed_cfg), embeddings=chosen)


def nested_cv(
    examples: Sequence[ClientExample],
    embeddings: np.ndarray | None,
    embed_cfg: dict[str, Any] | None,
    outer: int = 5,
    inner: int = 3,
    seed: int = 0,
    families: dict[str, Callable[[dict[str, Any]], bool]] | None = None,
    progress: Callable[[str], None] | None = None,
    curve: Sequence[float] = (),
) -> dict[str, Any]:
    """Per outer fold and family: the choice made in inner folds and its grade on the outer fold.

    `curve`: fractions of the outer training transcripts to refit the chosen product on (a
    learning curve, graded on the same outer folds)."""
    families = dict(families or FAMILIES)
    if embeddings is None:
        families = {k: f for k, f in families.items() if k != "embed only"}
    cands = candidates(embeddings is not None)
    folds = transcript_folds(examples, outer, seed)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ["baseline", *families]}
    pooled: dict[str, tuple[list[str], list[str]]] = {name: ([], []) for name in rows}
    all_idx = np.arange(len(examples))
    curve_rows: dict[float, list[dict[str, Any]]] = {f: [] for f in curve}
    t0 = time.monotonic()
    for k, test in enumerate(folds):
        train = np.setdiff1d(all_idx, test)
        gold = [examples[i].talk for i in test]
        pred = baseline_fit_predict([examples[i] for i in train], [examples[i] for i in test])
        rows["baseline"].append({"fold": k, **talk_metrics(gold, pred)})
        pooled["baseline"][0].extend(gold)
        pooled["baseline"][1].extend(pred)
        oof = oof_log_probas(examples, train, embeddings, inner, seed + 1 + k)
        y_inner = _y(examples, train)
        fitted: dict[str, list[str]] = {}
        for name, fam in families.items():
            cand, inner_f1 = choose(oof, y_inner, cands, fam)
            key = repr(sorted(cand.items()))
            if key not in fitted:
                coder = fit_candidate(examples, train, cand, embeddings, embed_cfg)
                fitted[key] = coder.code(
                    _items(examples, test),
                    embeddings[test] if embeddings is not None and coder.embed is not None else None,
                )
            pred = fitted[key]
            rows[name].append(
                {
                    "fold": k,
                    "inner_macro_f1": round(inner_f1, 4),
                    "chosen": _describe(cand),
                    "config": _config(cand, embed_cfg).to_dict(),
                    **talk_metrics(gold, pred),
                }
            )
            pooled[name][0].extend(gold)
            pooled[name][1].extend(pred)
            if name == "product (chosen)":
                for frac in curve:
                    sub = _transcript_subset(examples, train, frac, seed + k)
                    coder = fit_candidate(examples, sub, cand, embeddings, embed_cfg)
                    p = coder.code(_items(examples, test), embeddings[test] if coder.embed is not None else None)  # type: ignore[index]
                    curve_rows[frac].append({"fold": k, "n_train": len(sub), **talk_metrics(gold, p)})
        if progress:
            progress(f"outer fold {k + 1}/{outer} done at {time.monotonic() - t0:.0f} s")
    curve_summary = {
        str(f): {
            "n_train_mean": float(np.mean([r["n_train"] for r in rs])),
            "kappa": summarize(rs, [], [], pooled=False)["kappa"],
            "macro_f1": summarize(rs, [], [], pooled=False)["macro_f1"],
        }
        for f, rs in curve_rows.items()
        if rs
    }
    return {
        "folds": rows,
        "summary": {name: summarize(rows[name], *pooled[name]) for name in rows},
        "learning_curve": curve_summary,
        "outer": outer,
        "inner": inner,
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 1),
        "n": len(examples),
        "n_transcripts": len({e.group for e in examples}),
    }


ENCODER_ROWS = {"product (chosen)": "product (chosen) x encoder", "embed only": "embed only x encoder"}
ENCODER_ALONE = "encoder alone (fixed)"


def with_encoder(config: ClientTalkConfig, encoder: dict[str, Any]) -> ClientTalkConfig:
    """`config` (chosen in inner folds) times an encoder expert of fixed settings, weight 1.
    Fixed, because an encoder's tuning costs minutes: choosing its settings or weight in
    inner folds would multiply that by the folds and the grid."""
    return replace(config, encoder=encoder, encoder_weight=1.0)


def grade_with_encoder(
    examples: Sequence[ClientExample],
    embeddings: np.ndarray | None,
    result: dict[str, Any],
    encoder: dict[str, Any],
    progress: Callable[[str], None] | None = None,
) -> None:
    """Add to a `nested_cv` result, in the same outer folds, the rows with an encoder expert:
    each of `ENCODER_ROWS`' recipes as its inner folds chose it for that outer fold, times
    one encoder expert tuned on the outer training part; and the encoder expert alone."""
    folds = transcript_folds(examples, result["outer"], result["seed"])
    all_idx = np.arange(len(examples))
    names = [*ENCODER_ROWS.values(), ENCODER_ALONE]
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    pooled: dict[str, tuple[list[str], list[str]]] = {n: ([], []) for n in names}
    t0 = time.monotonic()
    for k, test in enumerate(folds):
        train = np.setdiff1d(all_idx, test)
        train_ex = [examples[i] for i in train]
        expert = EncoderExpert(EncoderConfig.from_dict(encoder), TALK_TYPES).fit(
            [e.text for e in train_ex], [e.previous for e in train_ex], [e.talk for e in train_ex], np.ones(len(train))
        )
        items = _items(examples, test)
        gold = [examples[i].talk for i in test]
        alone = expert.log_proba([it.text for it in items], [it.previous for it in items])
        preds = {ENCODER_ALONE: [TALK_TYPES[j] for j in alone.argmax(1)]}
        for base, name in ENCODER_ROWS.items():
            if base not in result["folds"]:
                continue
            chosen = ClientTalkConfig.from_dict(result["folds"][base][k]["config"])
            emb_train = embeddings[train] if chosen.embed_weight and embeddings is not None else None
            fitted = ClientTalkCoder.fit(train_ex, chosen, embeddings=emb_train)
            coder = ClientTalkCoder(
                with_encoder(chosen, encoder), fitted.ngram, fitted.embed, fitted.info, encoder=expert
            )
            preds[name] = coder.code(items, embeddings[test] if emb_train is not None else None)  # type: ignore[index]
        for name, pred in preds.items():
            rows[name].append({"fold": k, "encoder": encoder, **talk_metrics(gold, pred)})
            pooled[name][0].extend(gold)
            pooled[name][1].extend(pred)
        if progress:
            progress(f"encoder rows: outer fold {k + 1}/{len(folds)} done at {time.monotonic() - t0:.0f} s")
    for name in names:
        if rows[name]:
            result["folds"][name] = rows[name]
            result["summary"][name] = summarize(rows[name], *pooled[name])
    result["seconds_encoder"] = round(time.monotonic() - t0, 1)


def _transcript_subset(examples: Sequence[ClientExample], idx: np.ndarray, frac: float, seed: int) -> np.ndarray:
    groups = sorted({examples[i].group for i in idx})
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(groups)[: max(2, round(frac * len(groups)))].tolist())
    return np.array([i for i in idx if examples[i].group in keep], dtype=int)


def summarize(rows: Sequence[dict[str, Any]], gold: list[str], pred: list[str], pooled: bool = True) -> dict[str, Any]:
    def ms(key: str, cls: str | None = None) -> dict[str, float]:
        v = np.array([(r["per_class"][cls]["f1"] if cls else r[key]) for r in rows])
        return {
            "mean": round(float(v.mean()), 4),
            "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
            "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4),
        }

    out = {
        "kappa": ms("kappa"),
        "macro_f1": ms("macro_f1"),
        "accuracy": ms("accuracy"),
        "per_class_f1": {t: ms("", t) for t in TALK_TYPES},
    }
    if pooled:
        out["pooled"] = talk_metrics(gold, pred)
    return out


def _describe(c: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if c["ngram"] is not None:
        d.update(previous_weight=c["ngram"][0], history_weight=c["ngram"][1], C=c["ngram"][2])
    if c["embed"] is not None:
        d.update(C_embed=c["embed"], embed_weight=c["embed_weight"])
    d["bias"] = c.get("bias", {})
    return d


def select_recipe(
    examples: Sequence[ClientExample],
    embeddings: np.ndarray | None,
    embed_cfg: dict[str, Any] | None,
    folds: int = 3,
    seed: int = 0,
) -> tuple[ClientTalkConfig, float]:
    """The recipe to ship: the inner procedure run on all the examples (folds by transcript)."""
    all_idx = np.arange(len(examples))
    oof = oof_log_probas(examples, all_idx, embeddings, folds, seed)
    cand, f1 = choose(oof, _y(examples, all_idx), candidates(embeddings is not None))
    return _config(cand, embed_cfg), f1


def train_client_coder(
    out_dir: str | Path, annomi_csv: str | Path, select: bool = False, config: ClientTalkConfig | None = None
) -> Path:
    """Train on AnnoMI's client talk labels and save in `out_dir`: with the shipped coder's
    recipe, `config`, or (`select`) the recipe chosen again by cross-validation by transcript."""
    from mi_llm.errors import MiLlmError
    from mi_llm.miti.coders.client_talk import ClientEmbedder, load_annomi_client, shipped_client_coder_dir

    examples = load_annomi_client(annomi_csv)
    if not examples:
        raise MiLlmError(f"{annomi_csv}: no client utterances with a talk type")
    recipe = "the shipped coder's recipe"
    if select:
        embedder = ClientEmbedder()
        emb = embedder.embed([e.text for e in examples], [e.previous for e in examples])
        config, f1 = select_recipe(examples, emb, embedder.config())
        recipe = f"chosen again by 3-fold CV by transcript (macro-F1 {f1:.3f} there, optimistic: it chose on it)"
    elif config is None:
        config = ClientTalkCoder.load(shipped_client_coder_dir()).config
    else:
        recipe = "given"
    coder = ClientTalkCoder.fit(examples, config)
    coder.info["data"] = [{"kind": "annomi", "file": Path(annomi_csv).name, "column": "client_talk_type"}]
    coder.info["recipe"] = recipe
    return coder.save(out_dir)
