"""Does the client's NEXT turn help code the counselor's turn? (AnnoMI, 5 folds by transcript)

Human coders read the whole transcript: after a reflection a client often agrees ("yeah,
exactly") or elaborates; after a question, answers. This checks whether that signal is
there for a trained coder before building it into one: the n-gram features of the shipped
recipe (utterance words and characters, the client's previous turn, surface cues), TF-IDF +
logistic regression (C 4, balanced), with and without a block for the client's next turn
(its word n-grams at a weight, and cues: starts with agreement, with disagreement, its
length, no next turn). Same folds for both (`evaluate.grouped_folds`, seed 0); nothing is
chosen on them (the two weights are both reported).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_coder_next_turn.py --json next_turn.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mi_llm.miti.coders.evaluate import grouped_folds  # noqa: E402
from mi_llm.miti.coders.features import FeatureConfig, Featurizer, normalize, tokenize  # noqa: E402
from mi_llm.miti.coders.labels import iter_annomi_rows, load_annomi  # noqa: E402

AGREES = re.compile(r"^\W*(yeah|yes|yep|right|exactly|mm|mhm|uh-huh|um-hum|hmm|true|definitely|absolutely|sure)\b")
DISAGREES = re.compile(r"^\W*(no|nope|not really|well|i don't know)\b")


def next_client_turns(path: Path, uids: list[str]) -> list[str]:
    """The client's utterance right after each therapist utterance ('' when the next is not the client's)."""
    spoken: dict[tuple[str, int], tuple[str, str]] = {}
    for _line, key, row in iter_annomi_rows(path, "main_therapist_behaviour"):
        spoken.setdefault(key, (row["interlocutor"], row["utterance_text"] or ""))
    out = []
    for uid in uids:  # "annomi-<transcript>-<utterance>"
        tid, utt = uid[len("annomi-") :].rsplit("-", 1)
        who, text = spoken.get((tid, int(utt) + 1), ("", ""))
        out.append(text if who == "client" else "")
    return out


def cues(text: str) -> list[float]:
    t = normalize(text)
    return [float(bool(AGREES.search(t))), float(bool(DISAGREES.search(t))), math.log1p(len(tokenize(t))), float(not t)]


def _pick(xs: list[str], idx: np.ndarray) -> list[str]:
    return [xs[i] for i in idx]


def run(texts, contexts, nexts, y, folds, next_weight: float | None) -> dict[str, Any]:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import cohen_kappa_score, f1_score
    from sklearn.preprocessing import StandardScaler

    kappas, f1s = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        feats = Featurizer(FeatureConfig())
        x_train = feats.fit_transform(_pick(texts, train), _pick(contexts, train))
        x_test = feats.transform(_pick(texts, test), _pick(contexts, test))
        if next_weight is not None:
            vec = TfidfVectorizer(tokenizer=tokenize, preprocessor=normalize, token_pattern=None, ngram_range=(1, 2),
                                  sublinear_tf=True, min_df=2, max_features=50_000)  # fmt: skip
            cues_train = [cues(n) for n in _pick(nexts, train)]
            scale = StandardScaler().fit(cues_train)
            x_train = sparse.hstack(
                [
                    x_train,
                    vec.fit_transform(_pick(nexts, train)) * next_weight,
                    sparse.csr_matrix(scale.transform(cues_train)),
                ],
                format="csr",
            )
            x_test = sparse.hstack(
                [
                    x_test,
                    vec.transform(_pick(nexts, test)) * next_weight,
                    sparse.csr_matrix(scale.transform([cues(n) for n in _pick(nexts, test)])),
                ],
                format="csr",
            )
        clf = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000).fit(x_train, y[train])
        pred = clf.predict(x_test)
        kappas.append(cohen_kappa_score(y[test], pred))
        f1s.append(f1_score(y[test], pred, average="macro"))
    return {
        "kappa": round(float(np.mean(kappas)), 3),
        "kappa_sd": round(float(np.std(kappas)), 3),
        "macro_f1": round(float(np.mean(f1s)), 3),
        "kappa_per_fold": [round(float(k), 3) for k in kappas],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annomi", type=Path, default=REPO / ".." / "shared" / "data" / "annomi" / "AnnoMI-full.csv")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    examples = load_annomi(args.annomi)
    nexts = next_client_turns(args.annomi, [e.uid for e in examples])
    y = np.array([str(e.code) for e in examples])
    folds = grouped_folds(examples, 5, 0)
    texts, contexts = [e.text for e in examples], [e.context for e in examples]
    out: dict[str, Any] = {
        "utterances": len(examples),
        "with_a_next_client_turn": round(sum(bool(n) for n in nexts) / len(nexts), 3),
        "rows": {},
    }
    for name, weight in (("without the next turn", None), ("next turn, weight 0.5", 0.5), ("next turn, weight 1", 1.0)):
        out["rows"][name] = run(texts, contexts, nexts, y, folds, weight)
        print(f"{name}: {out['rows'][name]} ({time.time() - t0:.0f}s)", flush=True)
    args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
