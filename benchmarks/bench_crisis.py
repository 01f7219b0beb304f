"""The crisis detector measured: rules alone, learned alone, combined (rules OR learned).

1. `cv`: leave one source out over the public crisis sets (PsySUICIDE's four data
   sources, SAD, C-SSRS Reddit), the project's written training sets and samples of client
   talk (negatives: CPsyCounD, SMILE, MIBot, AnnoMI; rule-flagged turns left out): each
   source is scored by a detector whose weights and thresholds never saw it; C-SSRS and
   AnnoMI are never trained on at all. Recall, precision and
   false-positive rate per source and language; C-SSRS also per user (a user is flagged
   when any post is).
2. `talk`: the flag rate of the shipped detector on real client talk without crisis labels
   (AnnoMI, MIBot, CPsyCounD, SMILE client turns); the flagged turns' ids are written to
   --flagged (ids only) to be read by hand.
3. `heldout`: the bundled held-out set (written before the detector, never tuned on).
4. `speed`: ms per message of rules / learned / combined with history, interleaved, repeated.
5. `features`: which representation to learn from, by the same leave-one-source-out: the
   shipped character n-grams, the embedded model's hidden states (`--layers`, mean-pooled
   over the message), and a mix of the two regressions' log-odds. The embedding's C and the
   mix weight are chosen, like the thresholds, on the validation split of each fold's
   training sources; thresholds global or per language. Per held-out source: recall,
   precision, false-positive rate (learned alone and OR-ed with the rules), ROC AUC, and the
   recall at the held-out source's own 3% FPR (an oracle threshold: the ranking's quality,
   apart from calibration).
6. `curve`: a learning curve in distribution: the 5 folds of groups of `indist`, each fold's
   detector trained on 25/50/75/100% of the other folds' groups (two draws below 100%):
   per PsySUICIDE source, the learned score's ROC AUC and recall at the source's own 3% FPR
   (ranking, apart from thresholds) and the combined detector's recall / FPR at the
   thresholds its validation split chose. Does more labelled data of the same kind help?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_crisis.py --shared ../shared/data \\
        --parts cv,talk,heldout,speed --json crisis.json [--flagged flagged.jsonl]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_crisis.py --parts features --layers 9,14 --json features.json
    PYTHONPATH=src .venv/bin/python benchmarks/bench_crisis.py --parts curve --json curve.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mi_llm.serve.safety.classifier import default_classifier  # noqa: E402
from mi_llm.serve.safety.evaluate import bundled_set, evaluate, read_labelled  # noqa: E402
from mi_llm.serve.safety.learned import default_detector  # noqa: E402
from mi_llm.serve.safety.risk import RiskClassifier  # noqa: E402
from mi_llm.serve.safety.sources import TALK_CORPORA, TALK_TRAINED  # noqa: E402
from mi_llm.serve.safety.train import (  # noqa: E402
    NOT_TRAINED_ON,
    TrainConfig,
    choose_thresholds,
    cross_validate,
    cross_validate_groups,
    group_split,
    training_rows,
    training_weights,
)

DETECTORS = ("rules", "learned", "combined")
# sources scored but never trained on: C-SSRS, AnnoMI, and the talk corpora not in TALK_TRAINED
NEVER_TRAINED = (*NOT_TRAINED_ON, *(f"talk:{c}" for c in TALK_CORPORA if c not in TALK_TRAINED))


def all_rows(shared: Path) -> list[Any]:
    """Every labelled row of the cross-validations: the shared sets, the written sets, client talk."""
    return training_rows(shared=shared, exclude=(), talk=tuple(TALK_CORPORA))


def _rates(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """items: {crisis (gold, or None for kept-apart rows), rules, learned} -> per detector figures."""
    out = {}
    for name in DETECTORS:
        tp = fn = fp = tn = 0
        for it in items:
            flagged = it["rules"] or it["learned"] if name == "combined" else it[name]
            if it["crisis"] is None:
                continue
            if it["crisis"]:
                tp += flagged
                fn += not flagged
            else:
                fp += flagged
                tn += not flagged
        out[name] = {
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "fpr": round(fp / (fp + tn), 4) if fp + tn else None,
            "tp": tp,
            "fn": fn,
            "fp": fp,
            "tn": tn,
        }
    return out


def part_cv(shared: Path, in_distribution: bool = False) -> dict[str, Any]:
    """Leave one source out; or (`in_distribution`) 5 folds of groups across all sources."""
    rows = all_rows(shared)
    rules = default_classifier()
    t0 = time.time()
    say = lambda m: print(f"  {m} ({time.time() - t0:.0f}s)")  # noqa: E731
    if in_distribution:
        scored = cross_validate_groups(rows, 5, TrainConfig(), progress=say, eval_only=NEVER_TRAINED)
    else:
        scored = cross_validate(rows, TrainConfig(), progress=say, eval_only=NEVER_TRAINED)
    items: list[dict[str, Any]] = []
    for s in scored:
        gold = s.row.crisis if s.row.trainable else None
        items.append(
            {
                "source": s.row.source,
                "language": s.row.language,
                "group": s.row.group,
                "sub": s.row.subcategory,
                "crisis": gold,
                "rules": rules.classify(s.row.text, s.row.language).crisis,
                "learned": s.flagged,
                "high": s.score >= s.high_threshold and s.type != "passive_ideation",
                "type_ok": s.type == s.row.subcategory if s.row.crisis and s.row.fine else None,
            }
        )
    by = defaultdict(list)
    for it in items:
        if it["source"] != "cssrs":
            by[f"{it['source']} ({it['language']})"].append(it)
    result: dict[str, Any] = {"per_source": {}, "kept_apart": {}}
    for key, group in sorted(by.items()):
        result["per_source"][key] = {
            "n": len(group),
            "crisis": sum(bool(i["crisis"]) for i in group),
            **_rates(group),
        }
        apart = [i for i in group if i["crisis"] is None]
        if apart:
            result["kept_apart"][key] = {
                "n": len(apart),
                "labels": dict(Counter(i["sub"] for i in apart)),
                **{
                    d: sum(bool(i["rules"] or i["learned"]) if d == "combined" else i[d] for i in apart)
                    for d in DETECTORS
                },
            }
    users: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        if it["source"] == "cssrs":
            users[it["group"]].append(it)
    per_user = [
        {
            "crisis": posts[0]["crisis"],
            "sub": posts[0]["sub"],
            "rules": any(p["rules"] for p in posts),
            "learned": any(p["learned"] for p in posts),
        }
        for posts in users.values()
    ]
    result["cssrs_users"] = {"n": len(per_user), **_rates(per_user)}
    result["cssrs_indicator_users_flagged"] = {
        d: sum(
            bool(u["rules"] or u["learned"]) if d == "combined" else u[d] for u in per_user if u["sub"] == "indicator"
        )
        for d in DETECTORS
    }
    result["cssrs_posts"] = _rates([it for it in items if it["source"] == "cssrs"])
    for lang in ("zh", "en"):
        result[f"all_{lang}_without_cssrs"] = _rates(
            [i for i in items if i["language"] == lang and i["source"] != "cssrs"]
        )
    # per source: C-SSRS "types" are its users' levels, not the posts'
    typed: dict[str, list[bool]] = defaultdict(list)
    for i in items:
        if i["type_ok"] is not None and i["source"] != "cssrs":
            typed[i["source"]].append(i["type_ok"])
    result["type_accuracy"] = {k: [round(sum(v) / len(v), 3), len(v)] for k, v in sorted(typed.items())}
    return result


def client_turns(shared: Path) -> dict[str, list[tuple[str, str]]]:
    """(id, text) of every client turn per corpus (ids: dialogue:turn index)."""
    from mi_llm.corpus.importers import import_corpus

    corpora = {
        "annomi": ("annomi", shared / "annomi" / "AnnoMI-simple.csv"),
        "mibot": ("mibot", shared / "mibot"),
        "cpsycound": ("cpsycound", shared / "cpsycound" / "CPsyCounD"),
        "smile": ("smile", shared / "smile" / "data"),
    }
    out = {}
    for name, (source, path) in corpora.items():
        if not path.exists():
            print(f"  {name}: {path} missing, skipped")
            continue
        dialogues, _ = import_corpus(source, path)
        out[name] = [(f"{d.id}:{i}", t.text) for d in dialogues for i, t in enumerate(d.turns) if t.role == "client"]
    return out


def part_talk(shared: Path, flagged_path: Path | None) -> dict[str, Any]:
    combined = RiskClassifier()
    result = {}
    flagged_rows = []
    for name, turns in client_turns(shared).items():
        counts: Counter[str] = Counter()
        for tid, text in turns:
            r = combined.classify(text)
            rule = "rules" in r.detected_by
            learned = r.crisis and ("learned" in r.detected_by or (r.score or 0) >= combined.detector.threshold)  # type: ignore[union-attr]
            counts["rules"] += rule
            counts["learned"] += learned
            counts["combined"] += r.crisis
            counts["high"] += r.level == "high"
            counts["low"] += r.level == "low"
            if r.crisis:
                flagged_rows.append(
                    {"corpus": name, "id": tid, "level": r.level, "category": r.category, "by": r.detected_by}
                )
        n = len(turns)
        result[name] = {"turns": n, **{k: [v, round(v / n, 4)] for k, v in sorted(counts.items())}}
        print(f"  {name}: {result[name]}")
    if flagged_path is not None:
        flagged_path.write_text("".join(json.dumps(r) + "\n" for r in flagged_rows), encoding="utf-8")
    return result


def part_heldout() -> dict[str, Any]:
    rows = [r for lang in ("zh", "en") for r in read_labelled(bundled_set("heldout", lang))]
    out = {}
    for name, clf in (
        ("rules", RiskClassifier(use_detector=False)),
        ("learned", RiskClassifier(use_rules=False)),
        ("combined", RiskClassifier()),
    ):
        m = evaluate(rows, clf)
        out[name] = {
            "languages": m["languages"],
            "all": m["all"],
            "by_kind": m["by_kind"],
            "errors": m["errors"],
        }
    return out


def part_speed(repeats: int = 5) -> dict[str, Any]:
    msgs = [r["text"] for s in ("dev", "test2") for lang in ("zh", "en") for r in read_labelled(bundled_set(s, lang))]
    history = ["I have had a rough week at work.", "My sleep has been bad lately."]
    default_detector()
    runs: dict[str, list[float]] = {"rules": [], "learned": [], "combined": [], "combined+history": []}
    clfs = {
        "rules": RiskClassifier(use_detector=False),
        "learned": RiskClassifier(use_rules=False),
        "combined": RiskClassifier(),
        "combined+history": RiskClassifier(),
    }
    for _ in range(repeats):  # interleaved: each round runs every variant once
        for name, clf in clfs.items():
            hist = history if name.endswith("history") else ()
            t0 = time.perf_counter()
            for m in msgs:
                clf.classify(m, None, hist)
            runs[name].append((time.perf_counter() - t0) * 1000 / len(msgs))
    return {
        "messages": len(msgs),
        "repeats": repeats,
        "ms_per_message": {
            k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3)} for k, v in runs.items()
        },
    }


VARIANTS = ("ngram", "embed", "mixed")
EMBED_C = (0.001, 0.003, 0.01, 0.03)  # chosen on each fold's validation split (0.003 nearly always)
MIX = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the n-gram log-odds: 1 = n-grams alone, 0 = embedding alone


def _recall_at_fpr(z: Any, gold: Any, fpr: float = 0.03) -> float:
    """Recall at the threshold that flags `fpr` of these negatives."""
    import numpy as np

    neg = np.sort(z[~gold])[::-1]
    return float((z[gold] > neg[int(np.floor(fpr * len(neg)))]).mean())


def part_features(shared: Path, layers: list[int]) -> dict[str, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from mi_llm.miti.coders.embed import Embedder

    class MessageEmbedder(Embedder):  # "Client: <message>", no context: what the server reads
        speaker = "Client"

    rows = all_rows(shared)
    never = set(NEVER_TRAINED)
    cfg = TrainConfig()
    rules = default_classifier()
    ruled = np.array([rules.classify(r.text, r.language).crisis for r in rows])
    gold = np.array([r.crisis for r in rows])
    lang = np.array([r.language for r in rows])
    src = np.array([r.source for r in rows])
    usable = np.array([r.trainable for r in rows])
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731

    def fit_ngram(idx: list[int]) -> Any:
        vec = cfg.features.vectorizer()
        x = vec.fit_transform([rows[i].text for i in idx])
        m = LogisticRegression(C=cfg.c, max_iter=2000).fit(
            x, gold[idx], sample_weight=training_weights([rows[i] for i in idx], cfg)
        )
        return lambda j: m.decision_function(vec.transform([rows[i].text for i in j]))

    def fit_embed(vecs: Any, idx: list[int], c: float) -> Any:
        sc = StandardScaler().fit(vecs[idx])
        m = LogisticRegression(C=c, max_iter=3000).fit(
            sc.transform(vecs[idx]), gold[idx], sample_weight=training_weights([rows[i] for i in idx], cfg)
        )
        return lambda j: m.decision_function(sc.transform(vecs[j]))

    out: dict[str, Any] = {"rows": len(rows), "layers": {}}
    t0 = time.time()
    for layer in layers:
        emb = MessageEmbedder(layer=layer, max_tokens=128, context=False, batch_size=32)
        vecs = emb.embed([r.text for r in rows])
        print(f"  layer {layer}: vectors ready ({time.time() - t0:.0f}s)", flush=True)
        score = {v: np.zeros(len(rows)) for v in VARIANTS}
        flag = {f"{v}{m}": np.zeros(len(rows), bool) for v in VARIANTS for m in ("", "/lang")}
        chosen = {}
        for held in sorted(set(src)):
            test = np.flatnonzero(src == held).tolist()
            idx = [i for i in range(len(rows)) if src[i] != held and src[i] not in never and usable[i]]
            tr, va = group_split([rows[i] for i in idx], cfg.validation, cfg.seed)
            tr, va = [idx[k] for k in tr], [idx[k] for k in va]
            ng = fit_ngram(tr)
            c = max(EMBED_C, key=lambda c: _recall_at_fpr(fit_embed(vecs, tr, c)(va), gold[va]))
            em = fit_embed(vecs, tr, c)
            zn, ze = ng(va), em(va)
            mix = max(MIX, key=lambda a: _recall_at_fpr(a * zn + (1 - a) * ze, gold[va]))
            chosen[held] = {"embed_c": c, "mix": mix}
            tn, te = ng(test), em(test)
            for v, a in (("ngram", 1.0), ("embed", 0.0), ("mixed", mix)):
                sv, st = sig(a * zn + (1 - a) * ze), sig(a * tn + (1 - a) * te)
                th = choose_thresholds(sv, gold[va], cfg.recall_target, cfg.high_precision, cfg.max_fpr)[0]
                per = {
                    L: choose_thresholds(sv[m], gold[va][m], cfg.recall_target, cfg.high_precision, cfg.max_fpr)[0]
                    for L in ("zh", "en")
                    if gold[va][(m := lang[va] == L)].any()
                }
                score[v][test] = st
                flag[v][test] = st >= th
                flag[f"{v}/lang"][test] = st >= np.array([per.get(L, th) for L in lang[test]])
            print(f"  layer {layer}, held out {held}: {chosen[held]} ({time.time() - t0:.0f}s)", flush=True)
        table: dict[str, Any] = {}
        for held in sorted(set(src) - {"cssrs"}):
            m = (src == held) & usable
            entry: dict[str, Any] = {"n": int(m.sum()), "crisis": int(gold[m].sum())}
            for name, f in (("rules", ruled), *flag.items()):
                keys = [
                    {"crisis": bool(g), "rules": bool(r), "learned": bool(x)}
                    for g, r, x in zip(gold[m], ruled[m], f[m])
                ]
                r = _rates(keys)
                entry[name] = {k: r[k] for k in ("learned", "combined")} if name != "rules" else r["rules"]
            if gold[m].any() and (~gold[m]).any():
                entry["auc"] = {v: round(float(roc_auc_score(gold[m], score[v][m])), 3) for v in VARIANTS}
                entry["recall_at_own_3pct_fpr"] = {v: round(_recall_at_fpr(score[v][m], gold[m]), 3) for v in VARIANTS}
            table[f"{held} ({'+'.join(sorted(set(lang[m]), reverse=True))})"] = entry
        out["layers"][str(layer)] = {"chosen": chosen, "per_source": table}
    return out


CURVE_SHARES = (0.25, 0.5, 0.75, 1.0)


def part_curve(shared: Path, draws: int = 2) -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rows = all_rows(shared)
    rules = default_classifier()
    graded = [r for r in rows if r.trainable and r.source.startswith("psysuicide")]  # the rows reported
    ruled = {id(r): rules.classify(r.text, r.language).crisis for r in graded}
    out: dict[str, Any] = {}
    t0 = time.time()
    for share in CURVE_SHARES:
        runs: dict[str, list[dict[str, float]]] = defaultdict(list)
        for draw in range(draws if share < 1.0 else 1):
            scored = cross_validate_groups(
                rows, 5, TrainConfig(), eval_only=NEVER_TRAINED, train_share=share, share_seed=draw
            )
            by: dict[str, list[Any]] = defaultdict(list)
            for s in scored:
                if id(s.row) in ruled:
                    by[s.row.source].append(s)
            for source, group in sorted(by.items()):
                gold = np.array([s.row.crisis for s in group])
                z = np.array([s.score for s in group])
                combined = np.array([s.flagged or ruled[id(s.row)] for s in group])
                runs[source].append(
                    {
                        "auc": float(roc_auc_score(gold, z)),
                        "recall_at_own_3pct_fpr": _recall_at_fpr(z, gold),
                        "combined_recall": float(combined[gold].mean()),
                        "combined_fpr": float(combined[~gold].mean()),
                    }
                )
            print(f"  share {share}, draw {draw} ({time.time() - t0:.0f}s)", flush=True)
        out[str(share)] = {
            source: {k: round(statistics.mean(r[k] for r in rs), 3) for k in rs[0]} | {"draws": len(rs)}
            for source, rs in runs.items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO / ".." / "shared" / "data")
    ap.add_argument("--parts", default="cv,talk,heldout,speed")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--flagged", type=Path, help="ids of flagged real client turns (JSONL, no text)")
    ap.add_argument("--layers", default="9", help="features: the embedded model's layers to compare, e.g. 9,14")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out: dict[str, Any] = {}
    for part in parts:
        print(f"{part} ...", flush=True)
        if part == "cv":
            out["cv"] = part_cv(args.shared)
        elif part == "indist":
            out["indist"] = part_cv(args.shared, in_distribution=True)
        elif part == "talk":
            out["talk"] = part_talk(args.shared, args.flagged)
        elif part == "heldout":
            out["heldout"] = part_heldout()
        elif part == "speed":
            out["speed"] = part_speed()
        elif part == "curve":
            out["curve"] = part_curve(args.shared)
        elif part == "features":
            out["features"] = part_features(args.shared, [int(x) for x in args.layers.split(",")])
        else:
            ap.error(f"unknown part {part}")
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(out, indent=1, ensure_ascii=False)[:6000])


if __name__ == "__main__":
    main()
