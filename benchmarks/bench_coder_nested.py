"""Nested cross-validation of the trained MITI coder: inner folds choose, outer folds grade.

The coder's training (`TrainedCoder.fit` with a selection config) chooses its own
hyper-parameters on inner folds of its training data (`mi_llm.miti.coders.selection`: C of
each expert, the embedding expert's weight, coarse-then-fine SR/CR, per-code biases). This
script only grades that whole procedure on outer folds it never saw:

  nested   5 outer folds by transcript (AnnoMI) and by dialogue (demo corpus, zh and en),
           the same fold seed as `evaluate.grouped_folds`; each outer fold trains on the
           other four folds of AnnoMI + demo (the shipped coder's data) and codes the held-out
           AnnoMI transcripts and demo dialogues. Beside it, in the same outer folds, the
           issue's baseline: TF-IDF (word 1-2 + char 2-5 grams) + logistic regression on the
           AnnoMI training transcripts alone, utterance only. Ablations of the chosen coder
           (biases off, coarse-then-fine off) are graded on the same folds, not chosen by them.
  loso     leave one source out: trained on the demo corpus alone, tested on all AnnoMI;
           trained on AnnoMI alone, tested on the demo corpus (en, zh).
  curve    learning curve: in each outer fold, the fold's chosen config refitted on 10, 25
           and 50 AnnoMI training transcripts (+ the demo corpus).
  globals  do the automatic global ratings (regressed on the 100 demo sessions) tell AnnoMI's
           high-quality MI transcripts from the low-quality ones? AUC of each predicted global
           over the 106 transcripts, from the gold codes and from the nested section's
           out-of-fold codes, beside the AUC of the plain code summaries (R:Q, %CR).
  baseline_same_data  (not by default) add, to an earlier run's nested predictions, the
           baseline trained on the coder's own training parts (AnnoMI + demo), so that the
           demo rows have a baseline beside them; the nested section now does it itself.
  release  (not by default) only rewrite the --ship folder's release name, version and
           validity from this run's nested section, without training again.
  ship     the coder trained on all AnnoMI + the demo corpus (what the package ships), its
           validity from the nested section written into its coder.json; then coded the
           Welivita CounselChat sentences (automatic labels; never in training).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_coder_nested.py --recipe ngram \
        --json nested.json --md nested.md [--ship src/mi_llm/resources/coders/default]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mi_llm.miti.coders import evaluate as ev  # noqa: E402
from mi_llm.miti.coders import labels as L  # noqa: E402
from mi_llm.miti.coders.base import Item  # noqa: E402
from mi_llm.miti.coders.encoder import EncoderConfig  # noqa: E402
from mi_llm.miti.coders.features import FeatureConfig  # noqa: E402
from mi_llm.miti.coders.trained import CoderConfig, TrainedCoder, default_config  # noqa: E402

SECTIONS = ("nested", "globals", "ship", "loso", "curve")  # and "release" (below)
CODES = ("GI", "Persuade", "PwP", "Q", "SR", "CR", "AF", "Seek", "EA", "Confront", "null")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def baseline_config() -> CoderConfig:
    """The issue's baseline: utterance n-grams, TF-IDF, logistic regression, nothing chosen."""
    return CoderConfig(features=FeatureConfig(context=False, surface=False), C=10.0, class_weight=None)


def code(coder: TrainedCoder, examples: list[L.Example]) -> list[str | None]:
    return coder.code_utterances([Item(e.text, e.context, e.language, e.window) for e in examples])


def variant(coder: TrainedCoder, **changes: Any) -> TrainedCoder:
    """The same fitted coder with its combination changed (an ablation, graded not chosen)."""
    c = copy.copy(coder)
    c.config = replace(coder.config, **changes)
    return c


def outer_folds(sources: dict[str, list[L.Example]], n: int) -> dict[str, list[np.ndarray]]:
    return {name: ev.grouped_folds(ex, n, seed=0) for name, ex in sources.items()}


def summary(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("kappa", "macro_f1"):
        v = np.array([m[key] for m in per_fold], dtype=float)
        out[key] = {
            "mean": round(float(v.mean()), 4),
            "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
            "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4),
            "folds": [round(float(x), 4) for x in v],
        }
    return out


def section_nested(
    annomi,
    demo,
    cfg,
    n_folds,
    out,
    save,
    others: dict[str, CoderConfig] | None = None,
    fixed: list | None = None,
    encoder: EncoderConfig | None = None,
) -> None:
    """`others`: more recipes (name -> config), each chosen on the same inner folds and graded on
    the same outer folds as `cfg` (rows "coder, <name>"), e.g. a longer context window.
    `fixed`: an earlier nested run's per-fold choices (its `nested.chosen`): every coder of outer
    fold k is trained with the settings that run's inner folds chose in fold k, without choosing
    again (the features may differ: what they add is then graded alone, at a tenth of the cost).
    `encoder`: also grade each outer fold's chosen coder times an encoder expert of these fixed
    settings, tuned on the outer training part, at weight 1 (row `ENCODER_ROW`): an encoder's
    tuning costs minutes, so its settings are not chosen on inner folds."""
    folds = outer_folds({"annomi": annomi, "demo": demo}, n_folds)
    preds: dict[str, dict[str, list]] = {}
    chosen = []
    others_chosen: dict[str, list] = {name: [] for name in others or {}}
    for k in range(n_folds):
        t0 = time.monotonic()
        test_a, test_d = set(folds["annomi"][k].tolist()), set(folds["demo"][k].tolist())
        train_a = [e for i, e in enumerate(annomi) if i not in test_a]
        train = train_a + [e for i, e in enumerate(demo) if i not in test_d]
        coder = TrainedCoder.fit(train, chosen_config(fixed[k], cfg) if fixed else cfg)
        if fixed:
            coder.info["selection"] = {
                key: v for key, v in fixed[k].items() if key not in ("fold", "class_bias", "experts")
            }
        chosen.append(
            {
                "fold": k,
                **coder.info.get("selection", {}),
                "class_bias": coder.config.class_bias,
                "experts": coder.info["experts"],
            }
        )
        # (where a fold did not choose coarse-then-fine, its ablation is the coder itself)
        variants = {
            "coder": coder,
            "coder, no biases": variant(coder, class_bias={}),
            "coder, no coarse-then-fine": variant(coder, refine_reflections=False),
        }
        if "embed" in [x.name for x in coder.experts]:
            variants["coder, n-gram expert only"] = variant(coder, expert_weights={"embed": 0.0})
        if encoder is not None:
            # the experts the inner folds chose, refitted with their settings, times the encoder
            with_enc = TrainedCoder.fit(train, replace(coder.config, selection=None, encoder=encoder.to_dict()))
            variants[ENCODER_ROW] = with_enc
            if "embed" in [x.name for x in with_enc.experts]:
                variants[f"{ENCODER_ROW}, no embedding expert"] = variant(with_enc, expert_weights={"embed": 0.0})
        for name, other_cfg in (others or {}).items():
            other = TrainedCoder.fit(train, chosen_config(fixed[k], other_cfg) if fixed else other_cfg)
            variants[f"coder, {name}"] = other
            others_chosen[name].append(
                {"fold": k, **(other.info.get("selection") or fixed[k]), "class_bias": other.config.class_bias}  # type: ignore[index]
            )
        for name, c in variants.items():
            for src, ex, idx in (("annomi", annomi, folds["annomi"][k]), ("demo", demo, folds["demo"][k])):
                p = code(c, [ex[i] for i in idx])
                slot = preds.setdefault(name, {}).setdefault(src, [None] * len(ex))
                for i, x in zip(idx, p):
                    slot[int(i)] = x
        same_data_baseline(k, folds, annomi, demo, train, preds)
        base = TrainedCoder.fit(train_a, baseline_config())
        p = code(base, [annomi[i] for i in folds["annomi"][k]])
        slot = preds.setdefault("baseline (TF-IDF + LR, AnnoMI only)", {}).setdefault("annomi", [None] * len(annomi))
        for i, x in zip(folds["annomi"][k], p):
            slot[int(i)] = x
        log(f"outer fold {k}: {time.monotonic() - t0:.0f} s, chosen {chosen[-1].get('chosen')}")
    out["nested"] = grade(annomi, demo, preds, n_folds, chosen)
    if others:
        out["nested"]["others_chosen"] = {
            name: [{k: v for k, v in c.items() if k != "candidates"} for c in ch] for name, ch in others_chosen.items()
        }
    out["nested_predictions"] = preds
    save()


BASELINE_SAME_DATA = "baseline (TF-IDF + LR, same training data)"
ENCODER_ROW = "coder x encoder"


def same_data_baseline(k, folds, annomi, demo, train, preds) -> None:
    """The baseline trained on the coder's own training part (AnnoMI + demo), for the per-source rows."""
    base = TrainedCoder.fit(train, baseline_config())
    for src, ex in (("annomi", annomi), ("demo", demo)):
        idx = folds[src][k]
        slot = preds.setdefault(BASELINE_SAME_DATA, {}).setdefault(src, [None] * len(ex))
        for i, x in zip(idx, code(base, [ex[i] for i in idx])):
            slot[int(i)] = x


def section_baseline_same_data(annomi, demo, out, save) -> None:
    """Add the same-data baseline to an earlier run's nested predictions (same outer folds)."""
    n_folds = out["nested"]["folds"]
    folds = outer_folds({"annomi": annomi, "demo": demo}, n_folds)
    preds = out["nested_predictions"]
    for k in range(n_folds):
        test_a, test_d = set(folds["annomi"][k].tolist()), set(folds["demo"][k].tolist())
        train = [e for i, e in enumerate(annomi) if i not in test_a] + [
            e for i, e in enumerate(demo) if i not in test_d
        ]
        same_data_baseline(k, folds, annomi, demo, train, preds)
        log(f"same-data baseline, outer fold {k}")
    regrade(annomi, demo, out)
    save()


def regrade(annomi, demo, out) -> None:
    """Grade saved predictions again; an ablation missing in a fold that did not choose it is the coder's."""
    preds, n_folds, chosen = out["nested_predictions"], out["nested"]["folds"], out["nested"]["chosen"]
    folds = outer_folds({"annomi": annomi, "demo": demo}, n_folds)
    ablation = preds.get("coder, no coarse-then-fine")
    if ablation:
        for k, ch in enumerate(chosen):
            if not ch["chosen"]["refine"]:
                for src in ablation:
                    for i in folds[src][k]:
                        ablation[src][int(i)] = preds["coder"][src][int(i)]
    others_chosen = out["nested"].get("others_chosen")
    out["nested"] = grade(annomi, demo, preds, n_folds, chosen)
    if others_chosen:
        out["nested"]["others_chosen"] = others_chosen


def grade(annomi, demo, preds, n_folds, chosen) -> dict[str, Any]:
    """Per outer fold and pooled, per source, for every coder of `preds`."""
    folds = outer_folds({"annomi": annomi, "demo": demo}, n_folds)
    gold = {"annomi": [e.code for e in annomi], "demo": [e.code for e in demo]}
    res: dict[str, Any] = {"folds": n_folds, "chosen": chosen, "rows": {}}
    for name, by_src in preds.items():
        for src, p in by_src.items():
            subsets = {"annomi": [("AnnoMI", None)], "demo": [("demo en", "en"), ("demo zh", "zh")]}[src]
            ex_all = annomi if src == "annomi" else demo
            for label, lang in subsets:
                idx_all = [i for i, e in enumerate(ex_all) if lang is None or e.language == lang]
                if not idx_all:
                    continue
                per_fold = []
                for k in range(n_folds):
                    fold_set = set(folds[src][k].tolist())
                    idx = [i for i in idx_all if i in fold_set]
                    if idx:
                        per_fold.append(ev.metrics([gold[src][i] for i in idx], [p[i] for i in idx]))
                pooled = ev.metrics([gold[src][i] for i in idx_all], [p[i] for i in idx_all])
                res["rows"][f"{label} | {name}"] = {
                    "source": label,
                    "coder": name,
                    **summary(per_fold),
                    "pooled": pooled,
                }
    return res


def section_loso(annomi, demo, cfg, out, save) -> None:
    res = {}
    t0 = time.monotonic()
    c = TrainedCoder.fit(demo, cfg)
    res["trained on demo only -> AnnoMI"] = ev.metrics([e.code for e in annomi], code(c, annomi))
    log(f"loso demo-only: {time.monotonic() - t0:.0f} s")
    c = TrainedCoder.fit(annomi, cfg)
    for lang in ("en", "zh"):
        ex = [e for e in demo if e.language == lang]
        if not ex:
            continue
        res[f"trained on AnnoMI only -> demo {lang}"] = ev.metrics([e.code for e in ex], code(c, ex))
    log(f"loso: {time.monotonic() - t0:.0f} s")
    out["loso"] = res
    save()


def section_curve(annomi, demo, cfg, n_folds, out, save, only: set[int] | None = None) -> None:
    """`only`: these outer folds (the others' transcript orders are drawn all the same, so that a
    fold's subsets are those of a full run: folds can run as separate processes)."""
    folds = outer_folds({"annomi": annomi, "demo": demo}, n_folds)
    chosen = {c["fold"]: c for c in out["nested"]["chosen"]}
    res: dict[str, list] = {}
    rng = np.random.default_rng(0)
    for k in range(n_folds):
        test_a, test_d = set(folds["annomi"][k].tolist()), set(folds["demo"][k].tolist())
        train_a = [e for i, e in enumerate(annomi) if i not in test_a]
        groups = sorted({e.group for e in train_a})
        order = [groups[i] for i in rng.permutation(len(groups))]
        if only is not None and k not in only:
            continue
        fold_cfg = chosen_config(chosen[k], cfg)
        test = [annomi[i] for i in folds["annomi"][k]]
        for m in (10, 25, 50):
            keep = set(order[:m])
            train = [e for e in train_a if e.group in keep] + [e for i, e in enumerate(demo) if i not in test_d]
            c = TrainedCoder.fit(train, fold_cfg)
            graded = ev.metrics([e.code for e in test], code(c, test))
            res.setdefault(str(m), []).append(graded["kappa"])
            res.setdefault(f"{m} macro-F1", []).append(graded["macro_f1"])
        res.setdefault("all", []).append(out["nested"]["rows"]["AnnoMI | coder"]["kappa"]["folds"][k])
        res.setdefault("transcripts_all", []).append(len(groups))
        log(f"curve fold {k}: {res}")
    out["curve"] = res
    save()


def annomi_quality(path: Path) -> dict[str, str]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return {f"annomi-{r['transcript_id']}": r["mi_quality"] for r in csv.DictReader(f)}


def section_globals(annomi, annomi_path, out, save) -> None:
    from sklearn.metrics import roc_auc_score

    from mi_llm.corpus.schema import Dialogue
    from mi_llm.miti.codebook import GLOBALS
    from mi_llm.miti.coders.globals_model import GlobalsModel, session_features
    from mi_llm.resources import demo_dialogues

    quality = annomi_quality(annomi_path)
    gm = GlobalsModel.fit(demo_dialogues())  # as every coder's globals model: the demo sessions only
    codings = {
        "gold codes": [e.code for e in annomi],
        "coder's out-of-fold codes": out["nested_predictions"]["coder"]["annomi"],
    }
    res: dict[str, Any] = {"transcripts": {}, "auc": {}}
    for name, codes in codings.items():
        sessions: dict[str, list] = {}
        for e, c in zip(annomi, codes):  # one counselor turn per AnnoMI therapist utterance
            sessions.setdefault(e.group, []).append(
                {"role": "counselor", "text": e.text, "codes": [{"text": e.text, "code": c}]}
            )
        ids = sorted(sessions)
        y = np.array([quality[i] == "high" for i in ids])
        scores: dict[str, list[float]] = {g: [] for g in (*GLOBALS, "R:Q", "%CR", "MI-adherent rate", "Persuade rate")}
        for i in ids:
            d = Dialogue(id=i, source="annomi", language="en", style="mi", turns=sessions[i])
            r = gm.predict(d)
            f = dict(
                zip(
                    ("rate_" + c for c in ("GI", "Persuade", "PwP", "Q", "SR", "CR", "AF", "Seek", "EA", "Confront")),
                    session_features(d),
                )
            )
            refl = sum(u["codes"][0]["code"] in ("SR", "CR") for u in sessions[i])
            q = sum(u["codes"][0]["code"] == "Q" for u in sessions[i])
            cr = sum(u["codes"][0]["code"] == "CR" for u in sessions[i])
            for g in GLOBALS:
                scores[g].append(float(getattr(r, g)))
            scores["R:Q"].append(refl / q if q else float(refl))
            scores["%CR"].append(cr / refl if refl else 0.0)
            scores["MI-adherent rate"].append(f["rate_AF"] + f["rate_Seek"] + f["rate_EA"])
            scores["Persuade rate"].append(-f["rate_Persuade"])  # lower is better MI
        res["auc"][name] = {k: round(float(roc_auc_score(y, v)), 3) for k, v in scores.items()}
        res["transcripts"][name] = {"high": int(y.sum()), "low": int((~y).sum())}
    log(f"globals: {res['auc']}")
    out["globals"] = res
    save()


def with_window(cfg: CoderConfig, window: int, context_tokens: int | None, history: int = 0) -> CoderConfig:
    """The config with the embedded model reading `window` utterances before each one, and the
    vectors of `history` earlier counselor utterances joined to each one's."""
    emb = cfg.features.embeddings
    if emb is None:
        return cfg
    emb = {
        **emb,
        "window": window,
        "history": history,
        **({"context_tokens": context_tokens} if context_tokens else {}),
    }
    for key, off in (("window", 1), ("history", 0)):
        if emb[key] == off:  # absent when off, as in Embedder.config()
            emb.pop(key)
    return replace(cfg, features=replace(cfg.features, embeddings=emb))


def chosen_config(record: dict[str, Any], base: CoderConfig) -> CoderConfig:
    """The config an outer fold chose (`record`), on the run's recipe `base`."""
    c = record["chosen"]
    cfg = base
    return replace(
        cfg,
        selection=None,
        C=c["C"] or cfg.C,
        C_embed=c["C_embed"] or cfg.C_embed,
        source_weights={**cfg.source_weights, **c.get("source_weights", {})},
        expert_weights={"embed": c["embed_weight"]} if "embed" in record["experts"] else {},
        refine_reflections=c["refine"],
        class_bias=record["class_bias"],
        features=cfg.features if "embed" in record["experts"] else replace(cfg.features, embeddings=None),
    )


def validity(out: dict[str, Any]) -> dict[str, Any]:
    """What the coder's coder.json says of its validity: the nested section's outer folds."""
    rows = out.get("nested", {}).get("rows", {})
    if not rows:
        return {"summary": "not measured"}

    def fig(key: str) -> str:
        r = rows[key]
        return f"kappa {r['kappa']['mean']:.2f} ± {r['kappa']['sd']:.2f}, macro-F1 {r['macro_f1']['mean']:.2f} ± {r['macro_f1']['sd']:.2f}"

    base = "AnnoMI | baseline (TF-IDF + LR, AnnoMI only)"
    summary = (
        f"unseen AnnoMI transcripts (nested CV, {out['nested']['folds']} outer folds): {fig('AnnoMI | coder')} "
        f"(TF-IDF baseline {fig(base)})"
    )
    if "demo zh | coder" in rows:
        summary += f"; unseen Chinese demo dialogues: {fig('demo zh | coder')}"
    return {
        "summary": summary,
        "protocol": "nested cross-validation by transcript/dialogue: inner folds of the training part chose C, "
        "the expert weights, coarse-then-fine and the per-code biases"
        + (" (those of the recipe without the history's vectors, reused)" if out.get("fixed_from") else "")
        + "; outer folds graded (benchmarks/bench_coder_nested.py, docs/miti-coder.md)",
        "outer_folds": {key: {k: r[k] for k in ("kappa", "macro_f1")} for key, r in rows.items()},
    }


def section_release(folder: Path, out: dict[str, Any], release: str, save) -> None:
    from mi_llm.miti.coders.labels import LICENCES
    from mi_llm.miti.coders.trained import TrainedCoder as TC

    coder = TC.load(folder)
    coder.info["release"] = {"name": "mi-llm-default", "version": release}
    coder.info["validity"] = validity(out)
    counts = coder.info.get("sources", {})
    coder.info["data"] = [
        {
            "kind": d["kind"],
            "file": Path(d.get("file") or d["path"]).name if d["kind"] != "demo" else "mi_llm/resources/demo (bundled)",
            "utterances": counts.get(d["kind"], 0),
            "licence": LICENCES.get(d["kind"], "see the source"),
        }
        for d in coder.info.get("data", [])
    ]
    coder.save(folder)
    out["release"] = {"folder": str(folder), "info": coder.info}
    save()


def section_ship(annomi_path, cfg, folder, recipe, out, save, welivita, release) -> None:
    from mi_llm.miti.coders import train_coder
    from mi_llm.miti.coders.trained import TrainedCoder as TC

    t0 = time.monotonic()
    path = train_coder(folder, [("annomi", annomi_path)], recipe=recipe, config=cfg)
    coder = TC.load(path)
    coder.info["release"] = {"name": "mi-llm-default", "version": release}
    coder.info["validity"] = validity(out)
    coder.save(path)
    out["ship"] = {"folder": str(path), "seconds": round(time.monotonic() - t0, 1), "info": coder.info}
    if welivita:
        out["ship"]["welivita"] = ev.metrics([e.code for e in welivita], code(coder, welivita))
    log(f"ship: {time.monotonic() - t0:.0f} s")
    save()


def to_markdown(out: dict[str, Any]) -> str:
    """The tables of docs/miti-coder.md, from a results JSON."""
    lines: list[str] = []
    nested = out.get("nested")
    if nested:
        rows = nested["rows"]
        codes = [c for c in CODES if any(c in r["pooled"]["per_code"] for r in rows.values())]
        lines += [
            f"**Nested CV, {nested['folds']} outer folds (recipe `{out['recipe']}`): mean ± sd over outer folds "
            "[min-max]; per-code F1 pooled over the outer folds**",
            "",
            "| test set | coder | kappa | macro-F1 | " + " | ".join(codes) + " |",
            "|---|---|---|---|" + "---|" * len(codes),
        ]
        for r in rows.values():
            k, f = r["kappa"], r["macro_f1"]
            per = r["pooled"]["per_code"]
            lines.append(
                f"| {r['source']} ({r['pooled']['n']}) | {r['coder']} | {k['mean']:.3f} ± {k['sd']:.3f} "
                f"[{k['min']:.2f}-{k['max']:.2f}] | {f['mean']:.3f} ± {f['sd']:.3f} [{f['min']:.2f}-{f['max']:.2f}] | "
                + " | ".join(f"{per[c]['f1']:.2f}" if c in per else "–" for c in codes)
                + " |"
            )
        base = rows.get("AnnoMI | baseline (TF-IDF + LR, AnnoMI only)")
        coder = rows.get("AnnoMI | coder")
        if base and coder:
            lines += [
                "",
                "| outer fold | coder kappa | baseline kappa | coder macro-F1 | baseline macro-F1 | chosen on inner folds |",
                "|---|---|---|---|---|---|",
            ]
            for k, ch in enumerate(nested["chosen"]):
                c = ch.get("chosen", {})
                what = (
                    f"source weights {c.get('source_weights')}, C {c.get('C')}, embed weight {c.get('embed_weight')}, C_embed {c.get('C_embed')}, "
                    f"coarse-then-fine {c.get('refine')}, biases "
                    + ", ".join(f"{a} {b:+.2f}" for a, b in ch.get("class_bias", {}).items())
                )
                lines.append(
                    f"| {k} | {coder['kappa']['folds'][k]:.3f} | {base['kappa']['folds'][k]:.3f} | "
                    f"{coder['macro_f1']['folds'][k]:.3f} | {base['macro_f1']['folds'][k]:.3f} | {what} |"
                )
        variants = [
            key
            for key in rows
            if key.startswith("AnnoMI | ")
            and not any(a in key for a in ("no biases", "no coarse-then-fine", "n-gram expert only"))
        ]
        if len(variants) > 2:  # several recipes graded on the same outer folds: fold by fold
            lines += [
                "",
                "| AnnoMI, kappa / macro-F1 per outer fold | "
                + " | ".join(str(k) for k in range(nested["folds"]))
                + " | mean |",
                "|---|" + "---|" * (nested["folds"] + 1),
            ]
            for key in variants:
                r = rows[key]
                lines.append(
                    f"| {r['coder']} | "
                    + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(r["kappa"]["folds"], r["macro_f1"]["folds"]))
                    + f" | {r['kappa']['mean']:.3f} / {r['macro_f1']['mean']:.3f} |"
                )
        lines.append("")
    if out.get("loso"):
        lines += [
            "**Leave one source out**",
            "",
            "| trained on -> tested on | n | kappa | macro-F1 |",
            "|---|---|---|---|",
        ]
        for k, m in out["loso"].items():
            lines.append(f"| {k.removeprefix('trained on ')} | {m['n']} | {m['kappa']:.3f} | {m['macro_f1']:.3f} |")
        lines.append("")
    ship = out.get("ship", {})
    if ship.get("welivita"):
        m = ship["welivita"]
        lines += [
            f"Welivita CounselChat sentences (automatic labels, written counseling, never in training), coded by the "
            f"coder trained on everything shipped: n {m['n']}, kappa {m['kappa']:.3f}, macro-F1 {m['macro_f1']:.3f}.",
            "",
        ]
    if out.get("curve"):
        c = out["curve"]
        lines += [
            "**Learning curve: AnnoMI kappa on the outer test folds vs AnnoMI training transcripts (+ the demo corpus)**",
            "",
            "| training transcripts | mean kappa | per outer fold |",
            "|---|---|---|",
        ]
        for m in ("10", "25", "50", "all"):
            if m in c:
                n = f"all ({min(c['transcripts_all'])}-{max(c['transcripts_all'])})" if m == "all" else m
                lines.append(f"| {n} | {np.mean(c[m]):.3f} | {' / '.join(f'{x:.3f}' for x in c[m])} |")
        lines.append("")
    if out.get("globals"):
        g = out["globals"]
        names = list(next(iter(g["auc"].values())))
        lines += [
            "**Do the automatic globals tell AnnoMI's high-quality MI from the low-quality? AUC over "
            f"{sum(next(iter(g['transcripts'].values())).values())} transcripts**",
            "",
            "| codes from | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for src, auc in g["auc"].items():
            lines.append(f"| {src} | " + " | ".join(f"{auc[n]:.2f}" for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="ngram", choices=("ngram", "embed"))
    ap.add_argument(
        "--window",
        type=int,
        default=1,
        help="recipe embed: utterances of conversation the embedded model reads before each one (1: the "
        "client's previous turn)",
    )
    ap.add_argument("--context-tokens", type=int, default=None, help="recipe embed: the context's length cap")
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        help="recipe embed: vectors of the counselor's earlier utterances joined to each one's (embed.embed_items)",
    )
    ap.add_argument(
        "--also-history",
        action="append",
        type=int,
        default=[],
        metavar="K",
        help="nested: also grade recipe embed with this history, in the same folds",
    )
    ap.add_argument(
        "--also-window",
        action="append",
        default=[],
        metavar="N[:TOKENS]",
        help="nested: also grade recipe embed with this window (and context cap), in the same folds",
    )
    ap.add_argument(
        "--encoder",
        action="store_true",
        help="nested: also grade each fold's chosen coder times an encoder expert (all-MiniLM-L6-v2, fixed "
        "settings: --encoder-lora-r, --encoder-lr, 2 epochs) tuned on the outer training part",
    )
    ap.add_argument("--encoder-lora-r", type=int, default=16, help="the encoder's LoRA rank (0: every weight)")
    ap.add_argument("--encoder-lr", type=float, default=5e-4, help="the encoder's learning rate")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of each source (a smoke test)")
    ap.add_argument("--ship", type=Path, default=None, help="write the coder trained on everything here")
    ap.add_argument("--release", default="1", help="the shipped coder's version (coder.json info.release)")
    ap.add_argument("--welivita", action="store_true", help="code the Welivita sentences with the shipped coder")
    ap.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="add another run's coder (its nested predictions, same folds) as the row 'coder, NAME'",
    )
    ap.add_argument(
        "--fixed-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="nested: train every coder of outer fold k with the settings this earlier run chose in fold k",
    )
    ap.add_argument(
        "--ship-settings-from",
        type=Path,
        default=None,
        metavar="CODER_DIR",
        help="ship: train with the settings this coder folder chose on its inner folds (C, weights, biases), "
        "the run's features (e.g. --history), without choosing again (as --fixed-from graded it)",
    )
    ap.add_argument("--curve-folds", default=None, help="curve: only these outer folds (comma-separated)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None, help="write the tables here (also from an earlier --json alone)")
    args = ap.parse_args()

    data = L.shared_data_dir()
    if data is None:
        log("the shared data folder is absent: nothing to measure")
        sys.exit(0)
    src = dict(L.shared_sources(data))
    annomi, demo = L.load_annomi(src["annomi"]), L.demo_examples()
    welivita = L.load_welivita(src["welivita"]) if args.welivita else []
    if args.limit:
        annomi, demo, welivita = annomi[: args.limit], demo[: args.limit], welivita[: args.limit]
    cfg = with_window(default_config(recipe=args.recipe), args.window, args.context_tokens, args.history)
    others = {f"history {k}": with_window(default_config(recipe="embed"), 1, None, k) for k in args.also_history}
    for spec in args.also_window:
        n, _, tokens = spec.partition(":")
        others[f"window {n}" + (f", {tokens} tokens" if tokens else "")] = with_window(
            default_config(recipe="embed"), int(n), int(tokens) if tokens else None
        )
    out: dict[str, Any] = {
        "recipe": args.recipe,
        "config": cfg.to_dict(),
        "others": {name: c.to_dict() for name, c in others.items()},
        "counts": {
            "annomi": len(annomi),
            "demo_en": sum(e.language == "en" for e in demo),
            "demo_zh": sum(e.language == "zh" for e in demo),
            "welivita": len(welivita),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t_start = time.monotonic()

    def save() -> None:
        from mi_llm.io import write_json

        out["seconds"] = round(time.monotonic() - t_start, 1)
        write_json(args.json, out)

    sections = args.sections.split(",")
    if "nested" in sections:
        fixed = None
        if args.fixed_from:
            fixed = json.loads(args.fixed_from.read_text(encoding="utf-8"))["nested"]["chosen"]
            out["fixed_from"] = str(args.fixed_from)
        enc = EncoderConfig(lora_r=args.encoder_lora_r, lr=args.encoder_lr) if args.encoder else None
        if enc is not None:
            out["encoder"] = enc.to_dict()
        section_nested(annomi, demo, cfg, args.folds, out, save, others, fixed, enc)
    elif args.json.is_file():  # the later sections read the nested section of an earlier run
        earlier = json.loads(args.json.read_text(encoding="utf-8"))
        out.update(
            {k: v for k, v in earlier.items() if k not in out or k in ("nested", "nested_predictions", "recipe")}
        )
        if "nested_predictions" in out:
            regrade(annomi, demo, out)
    for spec in args.merge:
        name, _, path = spec.partition("=")
        other = json.loads(Path(path).read_text(encoding="utf-8"))
        same = ("annomi", "demo_en", "demo_zh")
        if other["nested"]["folds"] != out["nested"]["folds"] or any(
            other["counts"][k] != out["counts"][k] for k in same
        ):
            raise SystemExit(f"--merge {spec}: another data set or fold count")
        out["nested_predictions"][f"coder, {name}"] = other["nested_predictions"]["coder"]
        out.setdefault("merged", {})[name] = {"file": path, "config": other.get("config")}
        regrade(annomi, demo, out)
        save()
    if "baseline_same_data" in sections and "nested_predictions" in out:
        section_baseline_same_data(annomi, demo, out, save)
    if "globals" in sections and "nested_predictions" in out:
        section_globals(annomi, src["annomi"], out, save)
    if "ship" in sections and args.ship:
        ship_cfg = cfg
        if args.ship_settings_from:
            settings = json.loads((args.ship_settings_from / "coder.json").read_text(encoding="utf-8"))["config"]
            chosen = CoderConfig.from_dict(settings)
            ship_cfg = replace(
                chosen, selection=None, features=replace(chosen.features, embeddings=cfg.features.embeddings)
            )
            out["ship_settings_from"] = str(args.ship_settings_from)
        section_ship(src["annomi"], ship_cfg, args.ship, args.recipe, out, save, welivita, args.release)
    if "release" in sections and args.ship:
        section_release(args.ship, out, args.release, save)
    if "loso" in sections:
        section_loso(annomi, demo, cfg, out, save)
    if "curve" in sections and "nested" in out:
        only = {int(k) for k in args.curve_folds.split(",")} if args.curve_folds else None
        section_curve(annomi, demo, cfg, args.folds, out, save, only)
    if args.md:
        args.md.write_text(to_markdown(out) + "\n", encoding="utf-8")
    log(f"done in {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
