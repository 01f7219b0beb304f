"""The learned crisis detector: TF-IDF character n-grams and logistic regression.

Two linear models share one feature space: a binary one (crisis or not: its probability is
the `score`) and a multinomial one over the risk types of `sources.SUBCATEGORIES`, trained on
the crisis rows whose type was labelled. Character n-grams need no tokenizer, so one model
reads Chinese and English (and a Chinese message quoting English) alike.

Two thresholds on the score, both chosen on a validation split held out of the training
data: `threshold` for recall first (a message at or above it is a crisis), `high_threshold`
for precision (at or above it the risk is high unless the type is passive ideation).

The weights are plain arrays (`detector.npz`: vocabulary, idf, coefficients) plus
`detector.json` (thresholds, types, what it was trained on); nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.io import atomic_writer, write_json
from mi_llm.serve.safety.classifier import normalize

log = logging.getLogger(__name__)

FORMAT = "mi-llm-crisis-detector/1"
MAX_CHARS = 1000  # long Reddit posts: the start says enough, and n-grams of a page are slow


@dataclass
class FeatureConfig:
    ngram_min: int = 1
    ngram_max: int = 4
    max_features: int = 60_000
    min_df: int = 2

    def vectorizer(self, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(self.ngram_min, self.ngram_max),
            preprocessor=_prepare,
            lowercase=False,  # _prepare lower-cases (after NFKC)
            sublinear_tf=True,
            min_df=1 if vocabulary is not None else self.min_df,
            max_features=None if vocabulary is not None else self.max_features,
            vocabulary=vocabulary,
            dtype=np.float32,
        )


def _prepare(text: str) -> str:
    return normalize(text[:MAX_CHARS])


@dataclass
class LearnedDetector:
    vectorizer: Any  # a fitted TfidfVectorizer
    crisis_coef: np.ndarray  # (features,)
    crisis_intercept: float
    types: list[str]  # the multinomial model's classes
    type_coef: np.ndarray  # (types, features)
    type_intercept: np.ndarray  # (types,)
    threshold: float
    high_threshold: float
    features: FeatureConfig = field(default_factory=FeatureConfig)
    info: dict[str, Any] = field(default_factory=dict)  # what it was trained on, when, validation figures

    def _x(self, texts: Sequence[str]) -> Any:
        return self.vectorizer.transform(list(texts))

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Crisis probability of each text."""
        if not len(texts):
            return np.zeros(0, dtype=np.float64)
        z = self._x(texts) @ self.crisis_coef + self.crisis_intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))

    def predict(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        """(score, most likely risk type) of each text."""
        if not len(texts):
            return []
        x = self._x(texts)
        z = x @ self.crisis_coef + self.crisis_intercept
        s = 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
        t = np.asarray(x @ self.type_coef.T) + self.type_intercept
        return [(float(a), self.types[int(i)]) for a, i in zip(s, t.argmax(axis=1))]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.vectorizer.vocabulary_.items(), key=lambda kv: kv[1])
        terms = np.array([k for k, _ in vocab], dtype=str)
        with atomic_writer(folder / "detector.npz", mode="wb") as f:
            np.savez_compressed(
                f,
                terms=terms,
                idf=self.vectorizer.idf_.astype(np.float32),
                crisis_coef=self.crisis_coef.astype(np.float32),
                type_coef=self.type_coef.astype(np.float32),
                type_intercept=self.type_intercept.astype(np.float32),
            )
        meta = {
            "format": FORMAT,
            "features": self.features.__dict__,
            "crisis_intercept": float(self.crisis_intercept),
            "types": self.types,
            "threshold": round(float(self.threshold), 6),
            "high_threshold": round(float(self.high_threshold), 6),
            "info": self.info,
        }
        write_json(folder / "detector.json", meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LearnedDetector:
        folder = Path(folder)
        meta_path, npz_path = folder / "detector.json", folder / "detector.npz"
        if not meta_path.is_file() or not npz_path.is_file():
            raise MiLlmError(f"{folder}: not a crisis detector folder (needs detector.json and detector.npz)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            with np.load(npz_path, allow_pickle=False) as z:
                terms, idf = z["terms"].tolist(), z["idf"]
                crisis_coef, type_coef, type_intercept = z["crisis_coef"], z["type_coef"], z["type_intercept"]
            features = FeatureConfig(**meta["features"])
            vec = features.vectorizer({t: i for i, t in enumerate(terms)})
            vec.idf_ = idf.astype(np.float64)
            return cls(
                vec,
                crisis_coef.astype(np.float64),
                float(meta["crisis_intercept"]),
                list(meta["types"]),
                type_coef.astype(np.float64),
                type_intercept.astype(np.float64),
                float(meta["threshold"]),
                float(meta["high_threshold"]),
                features,
                dict(meta.get("info") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MiLlmError(f"{folder}: cannot load the crisis detector ({e})") from None


def bundled_detector_dir() -> Path:
    return Path(str(resources.files("mi_llm.serve.safety").joinpath("data", "detector")))


@lru_cache(maxsize=1)
def default_detector() -> LearnedDetector:
    """The shipped detector (trained by `mi-llm safety train`; see docs/serve.md)."""
    return LearnedDetector.load(bundled_detector_dir())
