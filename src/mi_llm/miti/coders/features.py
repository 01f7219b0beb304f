"""Features of an utterance for the trained coder.

Blocks (each optional, see `FeatureConfig`):
- word n-grams and character n-grams of the utterance (TF-IDF; Chinese words via jieba);
- word n-grams of the client's previous turn (what the counselor answers);
- lexical overlap with that turn and surface cues (a reflection reuses the client's words,
  a question ends with a question mark), language-independent;
- mean-pooled hidden states of the embedded model (`embed.Embedder`), standardised.

Text is NFKC-normalised first, so full-width Chinese punctuation ("？", "，") becomes the
ASCII form and the punctuation cues are shared across languages.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_TOKEN = re.compile(r"[\u4e00-\u9fff]+|\w+|[?!]")
# Function words that say little about what a reflection reuses.
_STOP = frozenset(
    "a an the and or but so to of in on at for with is are was were be been am i you it that this "
    "do does did have has had not no yes just like really very what how why when where me my your "
    "的 了 是 我 你 他 她 它 在 也 就 都 和 吗 呢 吧 啊 有 这 那 个 一 不 说 会 要 还 很".split()
)


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().strip()


def tokenize(text: str) -> list[str]:
    """Words of normalised text: jieba for Chinese runs, \\w+ and ?/! otherwise."""
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if _CJK_RUN.fullmatch(tok):
            out += _jieba_cut(tok)
        else:
            out.append(tok)
    return out


_JIEBA: Any = None


def _jieba_cut(text: str) -> list[str]:
    global _JIEBA
    if _JIEBA is None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        _JIEBA = jieba
    return [w for w in _JIEBA.lcut(text) if w.strip()]


def surface_features(text: str, context: str) -> list[float]:
    """Language-independent cues: overlap with the client's turn, question marks, length."""
    t_tokens = tokenize(normalize(text))
    c_tokens = tokenize(normalize(context)) if context else []
    t_content = {w for w in t_tokens if w not in _STOP and w not in "?!"}
    c_content = {w for w in c_tokens if w not in _STOP and w not in "?!"}
    inter = len(t_content & c_content)
    union = len(t_content | c_content) or 1
    t = normalize(text)
    return [
        inter / union,
        inter / (len(t_content) or 1),
        inter / (len(c_content) or 1),
        1.0 if t.rstrip(" \"')”’").endswith("?") else 0.0,
        1.0 if "?" in t else 0.0,
        math.log1p(len(t_tokens)),
        math.log1p(len(c_tokens)),
        1.0 if not context.strip() else 0.0,
    ]


@dataclass
class FeatureConfig:
    words: bool = True
    chars: bool = True
    context: bool = True  # n-grams of the client's previous turn
    surface: bool = True
    embeddings: dict[str, Any] | None = None  # Embedder config; None = no embeddings
    context_weight: float = 0.5
    surface_weight: float = 1.0
    embed_weight: float = 1.0
    min_df: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        return cls(**d)


@dataclass
class Featurizer:
    """Fits the vectorisers on training texts; turns (texts, contexts) into one matrix."""

    config: FeatureConfig
    _vec: dict[str, Any] = field(default_factory=dict)
    _scalers: dict[str, Any] = field(default_factory=dict)

    def _vectorizers(self) -> dict[str, Any]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        c = self.config
        v: dict[str, Any] = {}
        if c.words:
            v["words"] = TfidfVectorizer(
                tokenizer=tokenize,
                preprocessor=normalize,
                token_pattern=None,
                ngram_range=(1, 2),
                sublinear_tf=True,
                min_df=c.min_df,
            )
        if c.chars:
            v["chars"] = TfidfVectorizer(
                analyzer="char_wb",
                preprocessor=normalize,
                ngram_range=(2, 5),
                sublinear_tf=True,
                min_df=c.min_df,
                max_features=200_000,
            )
        if c.context:
            v["context"] = TfidfVectorizer(
                tokenizer=tokenize,
                preprocessor=normalize,
                token_pattern=None,
                ngram_range=(1, 2),
                sublinear_tf=True,
                min_df=c.min_df,
                max_features=50_000,
            )
        return v

    def fit_transform(
        self, texts: Sequence[str], contexts: Sequence[str], embeddings: np.ndarray | None = None
    ) -> sparse.csr_matrix:
        from sklearn.preprocessing import StandardScaler

        self._vec = self._vectorizers()
        blocks = []
        for name, vec in self._vec.items():
            src = contexts if name == "context" else texts
            m = vec.fit_transform(list(src))
            blocks.append(m * (self.config.context_weight if name == "context" else 1.0))
        if self.config.surface:
            s = np.array([surface_features(t, c) for t, c in zip(texts, contexts)])
            self._scalers["surface"] = StandardScaler().fit(s)
            blocks.append(sparse.csr_matrix(self._scalers["surface"].transform(s) * self.config.surface_weight))
        if self.config.embeddings is not None:
            if embeddings is None:
                raise ValueError("this featurizer needs embeddings")
            self._scalers["embed"] = StandardScaler().fit(embeddings)
            blocks.append(sparse.csr_matrix(self._embed_block(embeddings)))
        return sparse.hstack(blocks, format="csr")

    def _embed_block(self, emb: np.ndarray) -> np.ndarray:
        z = self._scalers["embed"].transform(emb)
        # Scaled so that the dense block's norm is comparable to one TF-IDF block's (about 1).
        return np.clip(z, -6, 6) * (self.config.embed_weight / math.sqrt(emb.shape[1]))

    def transform(
        self, texts: Sequence[str], contexts: Sequence[str], embeddings: np.ndarray | None = None
    ) -> sparse.csr_matrix:
        blocks = []
        for name, vec in self._vec.items():
            src = contexts if name == "context" else texts
            m = vec.transform(list(src))
            blocks.append(m * (self.config.context_weight if name == "context" else 1.0))
        if self.config.surface:
            s = np.array([surface_features(t, c) for t, c in zip(texts, contexts)])
            blocks.append(sparse.csr_matrix(self._scalers["surface"].transform(s) * self.config.surface_weight))
        if self.config.embeddings is not None:
            if embeddings is None:
                raise ValueError("this featurizer needs embeddings")
            blocks.append(sparse.csr_matrix(self._embed_block(embeddings)))
        return sparse.hstack(blocks, format="csr")
