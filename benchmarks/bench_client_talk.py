"""Validity of the client-talk coder (change / sustain / neutral) on AnnoMI transcripts it never saw.

Nested cross-validation by transcript (`mi_llm.miti.coders.client_talk_cv`): 5 outer folds
grade, 3 inner folds inside each outer training set choose the n-gram blocks (the
counselor's previous turn, the client's own previous turn), the embedding expert's C, the
experts' weights in the product and the per-class bias; the outer fold is never used to
choose. Each row ("family") is chosen and graded this way, beside the issue's baseline
(utterance-only word 1-2-gram TF-IDF + logistic regression, balanced) in the same outer folds.

The embedded model's vectors of every client utterance are computed once (cached on disk)
before any fold.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_client_talk.py --json ct.json --md ct.md [--curve] [--ship]

`--ship` then runs the inner procedure on all 106 transcripts, fits the chosen recipe on
all of them and writes the package's coder (src/mi_llm/resources/client_talk) with the
nested-CV figures as its validity.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mi_llm.miti.coders import client_talk as ct  # noqa: E402
from mi_llm.miti.coders import client_talk_cv as cv  # noqa: E402


def table(result: dict[str, Any]) -> str:
    lines = [
        "| recipe (chosen in inner folds) | macro-F1 mean ± sd [min-max] | kappa mean ± sd [min-max] | "
        "F1 change | F1 sustain | F1 neutral | beats baseline (folds, F1 / kappa) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = result["folds"]["baseline"]
    for name, s in result["summary"].items():

        def f(m: dict[str, float]) -> str:
            return f"{m['mean']:.3f} ± {m['sd']:.3f} [{m['min']:.3f}-{m['max']:.3f}]"

        rows = result["folds"][name]
        wins = (
            "-"
            if name == "baseline"
            else (
                f"{sum(r['macro_f1'] > b['macro_f1'] for r, b in zip(rows, base))}/{len(rows)} / "
                f"{sum(r['kappa'] > b['kappa'] for r, b in zip(rows, base))}/{len(rows)}"
            )
        )
        pc = s["per_class_f1"]
        lines.append(
            f"| {name} | {f(s['macro_f1'])} | {f(s['kappa'])} | {pc['change']['mean']:.3f} | "
            f"{pc['sustain']['mean']:.3f} | {pc['neutral']['mean']:.3f} | {wins} |"
        )
    return "\n".join(lines)


def per_class(result: dict[str, Any], name: str) -> str:
    p = result["summary"][name]["pooled"]
    lines = [
        f"Pooled over the outer folds, `{name}` (n={p['n']}, kappa {p['kappa']:.3f}, macro-F1 {p['macro_f1']:.3f}):",
        "",
        "| talk | precision | recall | F1 | support | predicted |",
        "|---|---|---|---|---|---|",
    ]
    for t, m in p["per_class"].items():
        lines.append(
            f"| {t} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} | {m['predicted']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "annomi" / "AnnoMI-full.csv"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--no-embed", action="store_true", help="n-gram candidates only (no embedded model)")
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument(
        "--curve",
        action="store_true",
        help="learning curve: the chosen product on 25/50/75%% of the outer training transcripts",
    )
    ap.add_argument("--ship", action="store_true", help="then train the package's client-talk coder on all transcripts")
    ap.add_argument(
        "--encoder",
        action="store_true",
        help="also grade the chosen recipes times a tuned encoder expert (all-MiniLM-L6-v2 with LoRA adapters, "
        "fixed settings: about 3 minutes an outer fold); with --ship, ship the chosen product times it",
    )
    ap.add_argument("--encoder-lora-r", type=int, default=16, help="the encoder's LoRA rank (0: tune every weight)")
    ap.add_argument("--encoder-lr", type=float, default=5e-4, help="the encoder's learning rate")
    ap.add_argument("--layer", type=int, default=9, help="the embedded model's layer to read (the shipped coder: 9)")
    ap.add_argument(
        "--context-tokens", type=int, default=64, help="tokens of the counselor's previous turn read (shipped: 64)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench_client_talk")

    t0 = time.monotonic()
    examples = ct.load_annomi_client(args.data)
    embeddings = embed_cfg = None
    t_embed = 0.0
    if not args.no_embed:
        embedder = ct.ClientEmbedder(layer=args.layer, context_tokens=args.context_tokens)
        embed_cfg = embedder.config()
        embeddings = embedder.embed([e.text for e in examples], [e.previous for e in examples])
        t_embed = time.monotonic() - t0
        log.info("embedded-model vectors of %d utterances in %.0f s", len(examples), t_embed)
    result = cv.nested_cv(
        examples,
        embeddings,
        embed_cfg,
        outer=args.outer,
        inner=args.inner,
        progress=log.info,
        curve=(0.25, 0.5, 0.75) if args.curve else (),
    )
    encoder = None
    if args.encoder:
        encoder = ct.client_encoder_config(lora_r=args.encoder_lora_r, lr=args.encoder_lr).to_dict()
        cv.grade_with_encoder(examples, embeddings, result, encoder, progress=log.info)
    shipped_row = cv.ENCODER_ROWS["product (chosen)"] if args.encoder else "product (chosen)"
    result["seconds_embeddings"] = round(t_embed, 1)
    result["seconds_total"] = round(time.monotonic() - t0, 1)
    md = [
        table(result),
        "",
        per_class(result, shipped_row),
        "",
        per_class(result, "baseline"),
        "",
        "Chosen per outer fold (product): "
        + "; ".join(f"{r['fold']}: {json.dumps(r['chosen'])}" for r in result["folds"]["product (chosen)"]),
        "",
        f"Time: embeddings {t_embed:.0f} s, nested CV {result['seconds']:.0f} s.",
    ]
    if result.get("learning_curve"):
        md += ["", "| share of outer training transcripts | utterances | macro-F1 | kappa |", "|---|---|---|---|"]
        for frac, c in result["learning_curve"].items():
            md.append(
                f"| {frac} | {c['n_train_mean']:.0f} | {c['macro_f1']['mean']:.3f} ± {c['macro_f1']['sd']:.3f} | "
                f"{c['kappa']['mean']:.3f} ± {c['kappa']['sd']:.3f} |"
            )
        full = result["summary"]["product (chosen)"]
        md.append(
            f"| 1.0 | {len(examples) * (args.outer - 1) / args.outer:.0f} | {full['macro_f1']['mean']:.3f} ± "
            f"{full['macro_f1']['sd']:.3f} | {full['kappa']['mean']:.3f} ± {full['kappa']['sd']:.3f} |"
        )
    text = "\n".join(md)
    print(text)
    from mi_llm.io import atomic_writer, write_json

    if args.json:
        write_json(args.json, result)
    if args.md:
        with atomic_writer(args.md) as f:
            f.write(text + "\n")
    if args.ship:
        t1 = time.monotonic()
        config, inner_f1 = cv.select_recipe(examples, embeddings, embed_cfg, folds=args.inner)
        if encoder:
            config = cv.with_encoder(config, encoder)
        coder = ct.ClientTalkCoder.fit(examples, config, embeddings=embeddings if config.embed_weight else None)
        coder.info["data"] = [
            {
                "kind": "annomi",
                "file": Path(args.data).name,
                "column": "client_talk_type",
                "labels_by": "experts (majority of annotators, ties dropped)",
                "licence": "stated Public Domain in an earlier upstream README; none stated now",
            }
        ]
        coder.info["recipe"] = (
            "chosen by " + str(args.inner) + "-fold CV by transcript on all the training "
            "transcripts among the candidates of mi_llm.miti.coders.client_talk_cv"
            + (", times the encoder expert with fixed settings" if encoder else "")
            + f"; CV macro-F1 there {inner_f1:.3f} (optimistic: it chose on it)"
        )
        s = result["summary"][shipped_row]
        validity = {
            "protocol": f"nested CV by transcript: {args.outer} outer folds grade, {args.inner} inner folds choose; "
            f"{result['n']} client utterances of {result['n_transcripts']} AnnoMI transcripts"
            + ("; the encoder expert's settings fixed beforehand" if encoder else ""),
            "macro_f1": s["macro_f1"],
            "kappa": s["kappa"],
            "per_class_f1": s["per_class_f1"],
            "baseline": {k: result["summary"]["baseline"][k] for k in ("macro_f1", "kappa")},
            "baseline_recipe": "utterance-only word 1-2-gram TF-IDF + logistic regression (balanced)",
            "measured": time.strftime("%Y-%m-%d"),
        }
        out = coder.save(ct.shipped_client_coder_dir(), validity=validity)
        log.info("shipped coder written to %s in %.0f s: %s", out, time.monotonic() - t1, config)


if __name__ == "__main__":
    main()
