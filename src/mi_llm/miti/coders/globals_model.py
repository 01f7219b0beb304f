"""The 4 MITI global ratings from a session's behaviour codes: one ridge regression each.

No public data pairs utterance codes with MITI 4.2.1 globals except the bundled demo
corpus (100 sessions, author-rated), so that is what it is fitted on. The model reads
only the code profile of a session (per-volley rates of each code, %CR, R:Q, MI-adherent
and non-adherent rates): it cannot see how well a reflection lands, which the human
globals are about. Its validity (cross-validated by dialogue) is in docs/miti-coder.md.
Predictions are rounded to the nearest integer and clipped to 1..5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mi_llm.corpus.schema import Dialogue, GlobalRatings
from mi_llm.errors import MiLlmError
from mi_llm.miti.codebook import CODES, GLOBALS, MI_ADHERENT, MI_NON_ADHERENT

# Why reports leave automatic globals out (measured, docs/miti-coder.md "Global ratings"):
# from the shipped coder's codes, on the 106 AnnoMI transcripts rated high/low MI quality by experts.
WITHHELD_FROM_REPORTS = (
    "automatic global ratings are not reported: from the coder's codes they tell AnnoMI's "
    "high- from low-quality MI sessions no better than the Persuade rate alone does "
    "(AUC 0.69-0.85 against 0.87), and were fitted on 100 demo sessions"
)

FEATURES: tuple[str, ...] = (
    *(f"rate_{c}" for c in CODES),
    "rate_null",
    "pct_cr",
    "pct_cr_missing",
    "r_to_q",
    "mia_rate",
    "mina_rate",
    "log_volleys",
)


def session_features(dialogue: Dialogue) -> list[float]:
    """Code profile of a coded session; rates are per counselor volley (turn)."""
    counts = dict.fromkeys([*CODES, None], 0)
    volleys = 0
    for t in dialogue.turns:
        if t.role != "counselor":
            continue
        volleys += 1
        for u in t.codes or []:
            counts[u.code] = counts.get(u.code, 0) + 1
    v = max(volleys, 1)
    refl = counts["SR"] + counts["CR"]
    pct_cr = counts["CR"] / refl if refl else 0.5
    r_q = min(refl / counts["Q"], 4.0) if counts["Q"] else min(float(refl), 4.0)
    return [
        *(counts[c] / v for c in CODES),
        counts[None] / v,
        pct_cr,
        0.0 if refl else 1.0,
        r_q,
        sum(counts[c] for c in MI_ADHERENT) / v,
        sum(counts[c] for c in MI_NON_ADHERENT) / v,
        float(np.log1p(volleys)),
    ]


@dataclass
class GlobalsModel:
    """Per rating: standardisation, then a linear model (coef, intercept)."""

    mean: list[float]
    scale: list[float]
    coef: dict[str, list[float]]
    intercept: dict[str, float]
    alpha: float = 1.0
    n_train: int = 0

    @classmethod
    def fit(cls, dialogues: Sequence[Dialogue], alpha: float = 3.0) -> GlobalsModel:
        from sklearn.linear_model import Ridge

        rows = [d for d in dialogues if d.miti_globals is not None and any(t.codes for t in d.turns)]
        if len(rows) < 5:
            raise MiLlmError(f"the global-ratings model needs at least 5 coded sessions with globals, got {len(rows)}")
        X = np.array([session_features(d) for d in rows])
        mean, scale = X.mean(0), X.std(0)
        scale[scale == 0] = 1.0
        Z = (X - mean) / scale
        coef, intercept = {}, {}
        for g in GLOBALS:
            y = np.array([getattr(d.miti_globals, g) for d in rows], dtype=float)
            m = Ridge(alpha=alpha).fit(Z, y)
            coef[g] = [float(c) for c in m.coef_]
            intercept[g] = float(m.intercept_)
        return cls(
            mean=mean.tolist(), scale=scale.tolist(), coef=coef, intercept=intercept, alpha=alpha, n_train=len(rows)
        )

    def predict_raw(self, dialogue: Dialogue) -> dict[str, float]:
        z = (np.array(session_features(dialogue)) - np.array(self.mean)) / np.array(self.scale)
        return {g: float(z @ np.array(self.coef[g]) + self.intercept[g]) for g in GLOBALS}

    def predict(self, dialogue: Dialogue) -> GlobalRatings | None:
        if not any(t.codes for t in dialogue.turns if t.role == "counselor"):
            return None  # nothing coded: no basis for a rating
        raw = self.predict_raw(dialogue)
        return GlobalRatings(**{g: int(min(5, max(1, round(v)))) for g, v in raw.items()})

    def to_dict(self) -> dict:
        return {
            "features": list(FEATURES),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "alpha": self.alpha,
            "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GlobalsModel:
        if d.get("features") != list(FEATURES):
            raise MiLlmError("the global-ratings model was saved with other features; retrain the coder")
        return cls(
            mean=d["mean"],
            scale=d["scale"],
            coef=d["coef"],
            intercept=d["intercept"],
            alpha=d.get("alpha", 1.0),
            n_train=d.get("n_train", 0),
        )

    def save(self, path: Path) -> None:
        from mi_llm.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> GlobalsModel:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as e:
            raise MiLlmError(f"{path}: unreadable global-ratings model ({e})") from None
