"""Validity and cost of the trained MITI coder, on utterances it never saw in training.

Sections (each prints a table; everything goes to --json and --md):
  annomi     in-domain: cross-validation on AnnoMI grouped by transcript (no transcript is
             split between training and test); the other sources are in every fold's
             training (except for the baseline, trained on AnnoMI alone as in the issue).
  annomi_only  the same, every recipe trained on the AnnoMI folds alone.
  ood        out-of-domain proxy: trained without Welivita, tested on the Welivita
             CC_Augmented sentences (written online counseling answers). Their labels are
             AUTOMATIC (propagated), so this is a weak proxy for the expert-labelled set.
  welivita   the same sentences in the shipped setting: cross-validation by CounselChat
             thread, every other source (and the other threads) in training, Welivita at its
             source weight; the baseline too is trained on everything, as in the issue.
  crossling  trained on English data only, tested on the Chinese demo corpus codes.
  zh         the Chinese demo codes included: cross-validation by dialogue on the Chinese
             demo corpus, English data and the other folds in training.
  globals    the global-ratings model, cross-validated by dialogue on the demo corpus,
             from the gold codes and from the coder's codes.
  timing     `train_coder` on all the shared data from an empty embedding cache (the
             20-minute budget), and coding speed.

Recipes compared:
  baseline   word (1-2) + char (2-5) n-gram TF-IDF, logistic regression (the issue's baseline)
  ngram+ctx  + the client's previous turn (n-grams), overlap/surface cues, class weights
  embed      surface cues + the embedded model's hidden states only (language-independent)
  full       ngram+ctx x the embedded model's frozen hidden states (the default, `--recipe embed`)
  tuned      ngram+ctx x the tuned expert: 2 blocks of the embedded model adapted with LoRA,
             and a head (`--recipe tuned`)
  encoder    ngram+ctx x the encoder expert: all-MiniLM-L6-v2 fine-tuned end to end, and a
             head (`--recipe encoder`; English)

    flock /tmp/mi-llm-heavy.lock .venv/bin/python benchmarks/bench_coder.py --json bench_coder.json --md bench_coder.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mi_llm.miti.codebook import CODES  # noqa: E402
from mi_llm.miti.coders import evaluate as ev  # noqa: E402
from mi_llm.miti.coders import labels as L  # noqa: E402
from mi_llm.miti.coders.embed import Embedder  # noqa: E402
from mi_llm.miti.coders.features import FeatureConfig  # noqa: E402
from mi_llm.miti.coders.trained import CoderConfig, TrainedCoder, default_config  # noqa: E402
from mi_llm.miti.coders.tuned import TunedConfig  # noqa: E402

console = Console(stderr=True, width=160)
SECTIONS = ("annomi", "annomi_only", "ood", "welivita", "crossling", "zh", "globals", "timing")
CODING_SECTIONS = set(SECTIONS) - {"globals", "timing"}  # those that train and test coders


def recipes(embedder: Embedder | None) -> dict[str, CoderConfig]:
    out = {
        "baseline": CoderConfig(features=FeatureConfig(context=False, surface=False), C=10.0, class_weight=None),
        "ngram+ctx": default_config(quick=True),
        "encoder": default_config(recipe="encoder"),
    }
    if embedder is not None:
        emb = embedder.config()
        out["embed"] = CoderConfig(features=FeatureConfig(words=False, chars=False, context=False, embeddings=emb))
        full = default_config(recipe="embed")
        full.features.embeddings = emb
        out["full"] = full
        out["tuned"] = default_config(recipe="tuned")
    return out


def fitter(config: CoderConfig, embedder: Embedder | None, tuned_embedder: Embedder | None = None):
    def fit(train: list[L.Example]) -> TrainedCoder:
        return TrainedCoder.fit(
            train,
            config,
            embedder=embedder if config.features.embeddings else None,
            tuned_embedder=tuned_embedder if config.tuned else None,
        )

    return fit


def row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "recipe": name,
        **{k: m[k] for k in ("n", "kappa", "macro_f1", "macro_f1_codes", "accuracy", "seconds") if k in m},
        "per_code_f1": {c: v["f1"] for c, v in m["per_code"].items()},
        "per_code": m["per_code"],
    }


def show(title: str, rows: list[dict[str, Any]]) -> None:
    codes = [c for c in (*CODES, L.NULL) if any(c in r["per_code_f1"] for r in rows)]
    t = Table(title=title)
    for col in ("recipe", "n", "kappa", "macro-F1", "macro-F1 codes", *codes):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["recipe"],
            str(r["n"]),
            f"{r['kappa']:.3f}",
            f"{r['macro_f1']:.3f}",
            f"{r['macro_f1_codes']:.3f}",
            *(f"{r['per_code_f1'][c]:.2f}" if c in r["per_code_f1"] else "" for c in codes),
        )
    console.print(t)


def md_table(title: str, rows: list[dict[str, Any]]) -> str:
    codes = [c for c in (*CODES, L.NULL) if any(c in r["per_code_f1"] for r in rows)]
    head = ["recipe", "n", "kappa", "macro-F1", "macro-F1 (codes)", *codes]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["recipe"],
                    str(r["n"]),
                    f"{r['kappa']:.3f}",
                    f"{r['macro_f1']:.3f}",
                    f"{r['macro_f1_codes']:.3f}",
                    *(f"{r['per_code_f1'][c]:.2f}" if c in r["per_code_f1"] else "–" for c in codes),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--recipes", default="baseline,ngram+ctx,embed,full,tuned,encoder")
    ap.add_argument("--timing-recipes", default="ngram,tuned,encoder", help="recipes timed by the timing section")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-embeddings", action="store_true", help="skip the recipes that need the embedded model")
    ap.add_argument(
        "--weights", default=None, help="source weights, e.g. welivita=0.2,mibot=0.2 (default: the recipe's)"
    )
    ap.add_argument("--limit", type=int, default=None, help="keep the first N utterances of each source (a smoke test)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()

    data = args.data_dir or L.shared_data_dir()
    if data is None or not Path(data).is_dir():
        console.print("the shared data folder is absent: nothing to measure (set --data-dir or MI_LLM_SHARED_DATA)")
        sys.exit(0)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {unknown}")
    embedder = None if args.no_embeddings else Embedder.from_config(default_config(recipe="embed").features.embeddings)
    # one embedded model for every fold's tuned expert: its frozen blocks run once per utterance
    tuned_embedder = None if args.no_embeddings else TunedConfig().embedder(keep_states=True)
    all_recipes = recipes(embedder)
    chosen = {k: v for k, v in all_recipes.items() if k in args.recipes.split(",")}
    if args.weights:
        for cfg in chosen.values():
            for kv in args.weights.split(","):
                k, _, v = kv.partition("=")
                cfg.source_weights[k.strip()] = float(v)

    t_load = time.monotonic()
    src = dict(L.shared_sources(Path(data)))
    annomi = L.load_annomi(src["annomi"])
    welivita = L.load_welivita(src["welivita"])
    mibot = L.load_mibot(src["mibot"])
    demo_en, demo_zh = L.demo_examples("en"), L.demo_examples("zh")
    if args.limit:
        annomi, welivita, mibot, demo_en, demo_zh = (
            x[: args.limit] for x in (annomi, welivita, mibot, demo_en, demo_zh)
        )
    console.print(
        f"loaded AnnoMI {len(annomi)}, Welivita {len(welivita)}, MIBot {len(mibot)}, demo en {len(demo_en)}, "
        f"demo zh {len(demo_zh)} utterances in {time.monotonic() - t_load:.1f} s"
    )
    results: dict[str, Any] = {
        "data": str(data),
        "folds": args.folds,
        "weights": args.weights,
        "embedder": embedder.config() if embedder else None,
        "counts": {
            "annomi": len(annomi),
            "welivita": len(welivita),
            "mibot": len(mibot),
            "demo_en": len(demo_en),
            "demo_zh": len(demo_zh),
        },
        "sections": {},
    }
    md: list[str] = []

    if embedder is not None and {"full", "embed"} & set(chosen) and CODING_SECTIONS & set(sections):
        # Fill the cache once, with a progress bar (later fits read it).
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        every = annomi + welivita + mibot + demo_en + demo_zh
        t0 = time.monotonic()
        with Progress(
            TextColumn("embedding utterances"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as p:
            task = p.add_task("", total=len(every))
            embedder.embed(
                [e.text for e in every],
                [e.context for e in every],
                progress=lambda d, n: p.update(task, completed=d, total=n),
            )
        results["embedding_fill_seconds"] = round(time.monotonic() - t0, 1)

    def run_cv(name: str, title: str, examples, extra_by_recipe) -> None:
        rows = []
        for rname, cfg in chosen.items():
            extra = extra_by_recipe(rname)
            _, m = ev.cross_validate(
                examples, fitter(cfg, embedder, tuned_embedder), n_folds=args.folds, extra_train=extra
            )
            rows.append(row(rname, m))
            console.print(f"{name} {rname}: kappa {m['kappa']:.3f} macro-F1 {m['macro_f1']:.3f} ({m['seconds']:.0f} s)")
        results["sections"][name] = rows
        show(title, rows)
        md.append(md_table(title, rows))

    def run_held(name: str, title: str, train_by_recipe, test) -> None:
        rows = []
        for rname, cfg in chosen.items():
            _, m = ev.held_out(train_by_recipe(rname), test, fitter(cfg, embedder, tuned_embedder))
            rows.append(row(rname, m))
            console.print(f"{name} {rname}: kappa {m['kappa']:.3f} macro-F1 {m['macro_f1']:.3f} ({m['seconds']:.0f} s)")
        results["sections"][name] = rows
        show(title, rows)
        md.append(md_table(title, rows))

    everything_else = welivita + mibot + demo_en + demo_zh
    all_but_welivita = annomi + mibot + demo_en + demo_zh
    if "annomi" in sections:
        # The baseline is trained on AnnoMI alone (as in the issue); the others on everything else too.
        run_cv(
            "annomi",
            f"AnnoMI, {args.folds}-fold CV by transcript (in-domain), other sources in training",
            annomi,
            lambda r: [] if r == "baseline" else everything_else,
        )
    if "annomi_only" in sections:
        run_cv(
            "annomi_only", f"AnnoMI, {args.folds}-fold CV by transcript, trained on AnnoMI only", annomi, lambda r: []
        )
    if "ood" in sections:
        run_held(
            "ood",
            "Welivita CC_Augmented (automatic labels), trained without Welivita (out-of-domain proxy)",
            lambda r: all_but_welivita,
            welivita,
        )
    if "welivita" in sections:
        run_cv(
            "welivita",
            f"Welivita CC_Augmented (automatic labels), {args.folds}-fold CV by thread, "
            "every other source in training (the shipped setting of the out-of-domain case)",
            welivita,
            lambda r: all_but_welivita,
        )
    if "crossling" in sections:
        run_held(
            "crossling",
            "Chinese demo codes, trained on English data only (cross-lingual)",
            lambda r: annomi + welivita + mibot + demo_en,
            demo_zh,
        )
    if "zh" in sections:
        run_cv(
            "zh",
            f"Chinese demo codes, {args.folds}-fold CV by dialogue, English data + other zh folds in training",
            demo_zh,
            lambda r: annomi + welivita + mibot + demo_en,
        )
    if "globals" in sections:
        results["sections"]["globals"] = bench_globals(
            args.folds, chosen.get("full") or chosen["ngram+ctx"], embedder, annomi + welivita + mibot
        )
        md.append(results["sections"]["globals"]["md"])
    if "timing" in sections:
        results["sections"]["timing"] = bench_timing(
            Path(data), [] if embedder is None else args.timing_recipes.split(",")
        )
        md.append(results["sections"]["timing"]["md"])

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.md:
        args.md.write_text("\n".join(md))
    console.print("done")


def bench_globals(folds: int, cfg: CoderConfig, embedder: Embedder | None, english: list[L.Example]) -> dict[str, Any]:
    """Global ratings, CV by dialogue on the demo corpus: from gold codes, and from predicted codes."""
    import numpy as np

    from mi_llm.miti.codebook import GLOBALS
    from mi_llm.miti.coders.globals_model import GlobalsModel
    from mi_llm.resources import demo_dialogues

    ds = demo_dialogues()
    rng = np.random.default_rng(0)
    fold = {d.id: k % folds for k, d in zip(range(len(ds)), [ds[i] for i in rng.permutation(len(ds))])}
    gold = {d.id: d.miti_globals for d in ds}
    pred_gold_codes: dict[str, Any] = {}
    pred_coded: dict[str, Any] = {}
    t0 = time.monotonic()
    for k in range(folds):
        train = [d for d in ds if fold[d.id] != k]
        test = [d for d in ds if fold[d.id] == k]
        gm = GlobalsModel.fit(train)
        for d in test:
            pred_gold_codes[d.id] = gm.predict(d)
        held = {f"demo-{d.id}" for d in test}
        ex = [e for e in L.demo_examples() if e.group not in held] + english
        coder = TrainedCoder.fit(ex, cfg, embedder=embedder if cfg.features.embeddings else None)
        coder.globals_model = gm
        for d in coder.code_dialogues(test):
            pred_coded[d.id] = d.miti_globals
    out: dict[str, Any] = {"seconds": round(time.monotonic() - t0, 1)}
    lines = [
        "**Global ratings (1-5), 5-fold CV by dialogue on the 100 demo sessions**",
        "",
        "| from | rating | MAE | exact | within 1 | Pearson r |",
        "|---|---|---|---|---|---|",
    ]
    for name, pred in (("gold codes", pred_gold_codes), ("coder's codes", pred_coded)):
        out[name] = {}
        for g in GLOBALS:
            y = np.array([getattr(gold[i], g) for i in gold])
            p = np.array([getattr(pred[i], g) for i in gold])
            r = float(np.corrcoef(y, p)[0, 1]) if p.std() > 0 and y.std() > 0 else float("nan")
            m = {
                "mae": float(np.abs(y - p).mean()),
                "exact": float((y == p).mean()),
                "within1": float((np.abs(y - p) <= 1).mean()),
                "pearson": r,
            }
            out[name][g] = m
            lines.append(
                f"| {name} | {g} | {m['mae']:.2f} | {m['exact']:.2f} | {m['within1']:.2f} | {m['pearson']:.2f} |"
            )
        base = {
            g: float(
                np.abs(
                    np.array([getattr(gold[i], g) for i in gold]) - np.mean([getattr(gold[i], g) for i in gold])
                ).mean()
            )
            for g in GLOBALS
        }
        out["mae_of_predicting_the_mean"] = base
    # Within one style: does it rank MI sessions, or only tell MI from advice-giving ones?
    lines += [
        "",
        "| from gold codes, within | rating | n | MAE | MAE of the style's mean | Pearson r |",
        "|---|---|---|---|---|---|",
    ]
    out["within_style"] = {}
    for style in ("mi", "raw"):
        ids = [d.id for d in ds if d.style == style]
        for g in GLOBALS:
            y = np.array([getattr(gold[i], g) for i in ids])
            p = np.array([getattr(pred_gold_codes[i], g) for i in ids])
            r = float(np.corrcoef(y, p)[0, 1]) if p.std() > 0 and y.std() > 0 else float("nan")
            m = {
                "n": len(ids),
                "mae": float(np.abs(y - p).mean()),
                "mae_mean": float(np.abs(y - y.mean()).mean()),
                "pearson": r,
            }
            out["within_style"][f"{style}/{g}"] = m
            lines.append(f"| {style} | {g} | {m['n']} | {m['mae']:.2f} | {m['mae_mean']:.2f} | {m['pearson']:.2f} |")
    lines.append("")
    lines.append(
        "MAE of always predicting the corpus mean: "
        + ", ".join(f"{g} {v:.2f}" for g, v in out["mae_of_predicting_the_mean"].items())
    )
    out["md"] = "\n".join(lines) + "\n"
    console.print(out["md"])
    return out


def bench_timing(data: Path, recipes: list[str]) -> dict[str, Any]:
    """The real `train_coder` on all shared data, with an empty embedding cache, timed; then coding speed."""
    from mi_llm.miti.coders import load_coder, train_coder
    from mi_llm.resources import demo_dialogues

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MI_LLM_EMBED_CACHE"] = str(Path(tmp) / "cache")
        stage_t: dict[str, float] = {}

        def on(stage: str, done: int, total: int) -> None:
            stage_t.setdefault(stage + "_start", time.monotonic())
            if done == total:
                stage_t[stage] = time.monotonic() - stage_t[stage + "_start"]

        for recipe in recipes or ["ngram"]:
            t0 = time.monotonic()
            folder = train_coder(Path(tmp) / recipe, L.shared_sources(data), recipe=recipe, progress=on)
            total = time.monotonic() - t0
            coder = load_coder(folder)
            ds = demo_dialogues()
            t1 = time.monotonic()
            coder.code_dialogues(ds)
            n = sum(len(t.codes or []) for d in ds for t in d.turns)
            out[recipe] = {
                "train_seconds": round(total, 1),
                "n_examples": coder.info["n_examples"],
                "stages": {k: round(v, 1) for k, v in stage_t.items() if not k.endswith("_start")},
                "code_utterances_per_second": round(n / (time.monotonic() - t1), 1),
                "model_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1),
            }
            stage_t.clear()
        del os.environ["MI_LLM_EMBED_CACHE"]
    lines = [
        "**Training and coding time (this machine, CPU)**",
        "",
        "| recipe | utterances | train (s) | stages (s) | coding (utt/s) | folder (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in out.items():
        lines.append(
            f"| {k} | {v['n_examples']} | {v['train_seconds']} | {v['stages']} | {v['code_utterances_per_second']} | {v['model_mb']} |"
        )
    res = {**out, "md": "\n".join(lines) + "\n"}
    console.print(res["md"])
    return res


if __name__ == "__main__":
    main()
