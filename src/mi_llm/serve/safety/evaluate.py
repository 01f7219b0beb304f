"""Precision and recall of the crisis classifier on a labelled set.

A labelled line is `{id, text, language, category, crisis?, kind?}` with category one of
suicide, self_harm, harm_others, abuse, none. The bundled sets (`safety/data/eval/`) were
written for this project: `dev.<lang>.jsonl` to develop the rules, `test.<lang>.jsonl`
held out, `test2`/`test3` stress sets of longer, in-context messages (see docs/serve.md for
how they were written and what each first measured).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from mi_llm.errors import InputError
from mi_llm.io import iter_jsonl
from mi_llm.serve.safety.classifier import CATEGORIES, NONE, CrisisClassifier
from mi_llm.serve.safety.risk import RiskClassifier, default_risk_classifier

SPLITS = ("dev", "test", "test2", "test3")  # the rules' sets; test2, test3: stress sets of longer, in-context messages
# The learned detector's: `train`, written to train it (client-talk fillers, indirect and means
# wordings); `heldout`, direct and indirect wordings written before it, never trained or tuned on.
DETECTOR_SPLITS = ("train", "heldout")
TRAINING_SPLITS = ("dev", "test", "test2", "test3", "train")  # what the shipped detector learned from


def bundled_set(split: str, language: str) -> Path:
    res = resources.files("mi_llm.serve.safety").joinpath("data", "eval", f"{split}.{language}.jsonl")
    return Path(str(res))


def read_labelled(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, obj in iter_jsonl(path):
        if set(obj) == {"meta"}:  # a header line: when and by whom the set was written
            continue
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise InputError(path, "'text' must be a non-empty string", lineno)
        cat = obj.get("category")
        if cat not in (*CATEGORIES, NONE):
            raise InputError(path, f"'category' must be one of {', '.join((*CATEGORIES, NONE))}", lineno)
        rows.append(obj)
    return rows


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def evaluate(
    rows: Iterable[dict[str, Any]], classifier: CrisisClassifier | RiskClassifier | None = None
) -> dict[str, Any]:
    """Binary crisis precision/recall/F1 and false-positive rate per language and overall,
    category accuracy on true positives, level accuracy where the gold `level` is given,
    accuracy by `kind`, and the ids of every error (never their text)."""
    clf = classifier or default_risk_classifier()
    per: dict[str, Counter[str]] = defaultdict(Counter)
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[dict[str, Any]] = []
    for row in rows:
        lang = row.get("language") or "?"
        gold = row["category"]
        if isinstance(clf, RiskClassifier):
            res = clf.classify(row["text"], row.get("language"), row.get("history") or ())
        else:
            res = clf.classify(row["text"], row.get("language"))
        gold_crisis = gold != NONE
        c = per[lang]
        c["n"] += 1
        if row.get("level"):
            c["leveled"] += 1
            c["level_ok"] += res.level == row["level"]
        if gold_crisis and res.crisis:
            c["tp"] += 1
            c["cat_ok"] += res.category == gold
        elif gold_crisis:
            c["fn"] += 1
        elif res.crisis:
            c["fp"] += 1
        else:
            c["tn"] += 1
        kind = f"{lang}:{row.get('kind', '?')}"
        kinds[kind]["n"] += 1
        kinds[kind]["correct"] += res.crisis == gold_crisis
        if res.crisis != gold_crisis or (gold_crisis and res.category != gold):
            errors.append(
                {
                    "id": row.get("id"),
                    "gold": gold,
                    "predicted": res.category,
                    "level": res.level,
                    "matched": res.matched,
                }
            )
    total: Counter[str] = Counter()
    for c in per.values():
        total.update(c)
    out: dict[str, Any] = {"languages": {}, "by_kind": {}, "errors": errors}
    for name, c in [*sorted(per.items()), ("all", total)]:
        p, r = _ratio(c["tp"], c["tp"] + c["fp"]), _ratio(c["tp"], c["tp"] + c["fn"])
        f1 = round(2 * p * r / (p + r), 4) if p and r else None
        stats = {
            "n": c["n"],
            "crisis": c["tp"] + c["fn"],
            "tp": c["tp"],
            "fp": c["fp"],
            "fn": c["fn"],
            "tn": c["tn"],
            "precision": p,
            "recall": r,
            "f1": f1,
            "false_positive_rate": _ratio(c["fp"], c["fp"] + c["tn"]),
            "category_accuracy": _ratio(c["cat_ok"], c["tp"]),
            "level_accuracy": _ratio(c["level_ok"], c["leveled"]),
        }
        if name == "all":
            out["all"] = stats
        else:
            out["languages"][name] = stats
    for k, c in sorted(kinds.items()):
        out["by_kind"][k] = {"n": c["n"], "accuracy": _ratio(c["correct"], c["n"])}
    return out
