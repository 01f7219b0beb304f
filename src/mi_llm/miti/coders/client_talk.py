"""The client-talk coder: change talk, sustain talk or neutral (MISC) for each client utterance.

Trained on AnnoMI's expert `client_talk_type` labels. What a client says is read with what
the counselor said just before (a question about reasons to change invites change talk)
and, when known, the client's own previous turn (talk types persist).

Experts combined as a product, as in the therapist coder (`trained.py`):
- the n-gram expert: a logistic regression over word and character n-grams of the
  utterance, word n-grams of the counselor's previous turn and of the client's own previous
  turn (TF-IDF, each block weighted);
- the embedding expert: a logistic regression over the embedded model's hidden states
  (`embed.py`), which reads "Counselor: <previous turn> / Client: <utterance>";
- the encoder expert: a small English sentence encoder tuned on the labels (`encoder.py`,
  LoRA adapters or every weight), reading the pair (utterance, "Counselor: <previous turn>").
Their log-probabilities are added (each times its weight) and a
per-class offset (`bias`, chosen in cross-validation for macro-F1) is added before the
argmax: with class weights balanced for the rare sustain talk (12%), the plain argmax
over-predicts change and sustain talk (measured: the chosen offsets are negative).

The n-gram and encoder experts know English only (AnnoMI): with an embedding expert present,
they vote on other languages in proportion to what they saw of them, as the therapist coder's do.

A client-talk coder folder holds `client_talk.json` (what it is: recipe, training data,
version, its measured validity), `model.joblib` (the fitted featurizer and
classifiers: a pickle, load only folders you trust) and, with an encoder expert,
`encoder/` (`encoder.EncoderExpert.save`). The shipped one is in
`mi_llm/resources/client_talk/`; `benchmarks/bench_client_talk.py` measures the recipe by
nested cross-validation and `mi-llm miti train-client-coder` retrains it
(`client_talk_cv.train_client_coder`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.embed import Embedder
from mi_llm.miti.coders.encoder import EncoderConfig, EncoderExpert

log = logging.getLogger(__name__)

TALK_TYPES = ("change", "sustain", "neutral")
FORMAT = "mi-llm-client-talk-coder"
VERSION = 1
VERSION_WITH_ENCODER = 2  # a folder with an encoder expert (older mi-llm cannot read it)
READABLE_VERSIONS = (VERSION, VERSION_WITH_ENCODER)


# ---------------------------------------------------------------- data


@dataclass
class ClientExample:
    """One client utterance with its talk type (change | sustain | neutral)."""

    text: str
    talk: str
    group: str  # the transcript: cross-validation never splits one
    previous: str = ""  # the counselor's previous turn
    history: str = ""  # the client's own previous turn
    language: str = "en"
    source: str = "annomi"
    uid: str = ""


@dataclass
class ClientItem:
    """One client utterance to code."""

    text: str
    previous: str = ""
    history: str = ""
    language: str | None = None

    @property
    def lang(self) -> str:
        return self.language or detect_language(self.text)


def load_annomi_client(path: str | Path) -> list[ClientExample]:
    """AnnoMI-full.csv (or -simple) client utterances with their majority talk type.

    Several annotators: the majority label; a tie at the top is dropped (as for therapist
    codes). `previous` is the latest therapist utterance before it, `history` the latest
    client utterance before that one (both within the transcript)."""
    from mi_llm.miti.coders.labels import iter_annomi_rows

    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for _lineno, key, row in iter_annomi_rows(Path(path), "client_talk_type"):
        r = rows.setdefault(key, {"role": row["interlocutor"], "text": row["utterance_text"] or "", "votes": []})
        talk = (row.get("client_talk_type") or "").strip()
        if r["role"] == "client" and talk in TALK_TYPES:
            r["votes"].append(talk)
    by_transcript: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (tid, uid), r in rows.items():
        by_transcript[tid].append((uid, r))
    out: list[ClientExample] = []
    dropped = 0
    for tid in sorted(by_transcript, key=lambda t: (int(t) if t.isdigit() else math.inf, t)):
        previous = history = last_client = ""
        for uid, r in sorted(by_transcript[tid], key=lambda x: x[0]):
            if r["role"] == "therapist":
                previous, history = r["text"], last_client
                continue
            if r["role"] != "client":
                continue
            counts = Counter(r["votes"]).most_common()
            tie = len(counts) > 1 and counts[0][1] == counts[1][1]
            if not counts or tie or not r["text"].strip():
                dropped += 1
            else:
                out.append(
                    ClientExample(
                        text=r["text"],
                        talk=counts[0][0],
                        group=f"annomi-{tid}",
                        previous=previous,
                        history=history,
                        uid=f"annomi-{tid}-{uid}",
                    )
                )
            last_client = r["text"]
    log.info("AnnoMI: %d client utterances, %d dropped (tie or no talk type)", len(out), dropped)
    return out


def shared_annomi() -> Path | None:
    """../shared/data/annomi/AnnoMI-full.csv when present."""
    from mi_llm.miti.coders.labels import shared_data_dir

    root = shared_data_dir()
    p = root / "annomi" / "AnnoMI-full.csv" if root else None
    return p if p and p.is_file() else None


# ---------------------------------------------------------------- embeddings


class ClientEmbedder(Embedder):
    """The embedded model reading "Counselor: <previous turn> / Client: <utterance>" (the
    therapist coder's `Embedder` with the speakers swapped; its own cache key)."""

    speaker = "Client"
    context_speaker = "Counselor"

    def config(self) -> dict:
        return {**super().config(), "speaker": "client"}

    @classmethod
    def from_config(cls, cfg: dict, cache_dir: Path | None = None) -> ClientEmbedder:
        return cls(cache_dir=cache_dir, **{k: v for k, v in cfg.items() if k != "speaker"})


def default_embedder_config() -> dict[str, Any]:
    return ClientEmbedder().config()


def client_encoder_config(**overrides: Any) -> EncoderConfig:
    """The encoder expert for client talk: the context turn is the counselor's."""
    return EncoderConfig(**{"context_speaker": "Counselor", **overrides})


# ---------------------------------------------------------------- the model


@dataclass
class ClientTalkConfig:
    words: bool = True  # word 1-2-grams of the utterance
    chars: bool = True  # character 2-5-grams of the utterance
    previous_weight: float = 0.5  # word n-grams of the counselor's previous turn (0 = none)
    history_weight: float = 0.0  # word n-grams of the client's own previous turn (0 = none)
    C: float = 2.0  # the n-gram expert's inverse regularisation
    embeddings: dict[str, Any] | None = None  # ClientEmbedder config; None = no embedding expert
    C_embed: float = 0.5
    embed_weight: float = 1.0  # the embedding expert's exponent in the product
    ngram_weight: float = 1.0  # the n-gram expert's exponent in the product (0 = none)
    encoder: dict[str, Any] | None = None  # EncoderConfig of the encoder expert; None = none
    encoder_weight: float = 1.0  # the encoder expert's exponent in the product
    class_weight: str | None = "balanced"
    bias: dict[str, float] = field(default_factory=dict)  # log-offset per talk type, added before the argmax
    min_df: int = 2
    max_iter: int = 1000
    min_language_examples: int = 300

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientTalkConfig:
        return cls(**d)


class NgramFeaturizer:
    """TF-IDF blocks of the utterance, the counselor's previous turn and the client's previous turn."""

    def __init__(self, config: ClientTalkConfig):
        self.config = config
        self.vectorizers: dict[str, Any] = {}

    def _make(self) -> dict[str, Any]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        from mi_llm.miti.coders.features import normalize, tokenize

        c = self.config

        def words(max_features: int | None = None) -> Any:
            return TfidfVectorizer(
                tokenizer=tokenize,
                preprocessor=normalize,
                token_pattern=None,
                ngram_range=(1, 2),
                sublinear_tf=True,
                min_df=c.min_df,
                max_features=max_features,
            )

        v: dict[str, Any] = {}
        if c.words:
            v["text"] = words()
        if c.chars:
            v["chars"] = TfidfVectorizer(
                analyzer="char_wb",
                preprocessor=normalize,
                ngram_range=(2, 5),
                sublinear_tf=True,
                min_df=c.min_df,
                max_features=200_000,
            )
        if c.previous_weight > 0:
            v["previous"] = words(50_000)
        if c.history_weight > 0:
            v["history"] = words(50_000)
        return v

    def _source(self, name: str, items: Sequence[ClientItem]) -> list[str]:
        if name == "previous":
            return [it.previous for it in items]
        if name == "history":
            return [it.history for it in items]
        return [it.text for it in items]

    def _weight(self, name: str) -> float:
        return {"previous": self.config.previous_weight, "history": self.config.history_weight}.get(name, 1.0)

    def fit_transform(self, items: Sequence[ClientItem]) -> Any:
        from scipy import sparse

        self.vectorizers = self._make()
        if not self.vectorizers:
            raise MiLlmError("the client-talk recipe has no n-gram block")
        blocks = []
        for name, v in list(self.vectorizers.items()):
            try:
                blocks.append(v.fit_transform(self._source(name, items)) * self._weight(name))
            except ValueError:  # "empty vocabulary": no previous or history turns in this data
                if name not in ("previous", "history"):
                    raise
                log.info("client-talk n-grams: no %s turns with words in the training data, block left out", name)
                del self.vectorizers[name]
        return sparse.hstack(blocks, format="csr")

    def transform(self, items: Sequence[ClientItem]) -> Any:
        from scipy import sparse

        return sparse.hstack(
            [v.transform(self._source(n, items)) * self._weight(n) for n, v in self.vectorizers.items()], format="csr"
        )


def _one_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_ngram_expert(
    items: Sequence[ClientItem], y: Sequence[str], config: ClientTalkConfig, sample_weight: np.ndarray | None = None
) -> tuple[NgramFeaturizer, Any]:
    from sklearn.linear_model import LogisticRegression

    feat = NgramFeaturizer(config)
    X = feat.fit_transform(items)
    clf = LogisticRegression(C=config.C, class_weight=config.class_weight, max_iter=config.max_iter)
    with _one_thread():
        clf.fit(X, list(y), sample_weight=sample_weight)
    return feat, clf


def fit_embed_expert(
    emb: np.ndarray, y: Sequence[str], config: ClientTalkConfig, sample_weight: np.ndarray | None = None
) -> tuple[Any, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(emb)
    clf = LogisticRegression(C=config.C_embed, class_weight=config.class_weight, max_iter=config.max_iter)
    with _one_thread():
        clf.fit(_scaled(scaler, emb), list(y), sample_weight=sample_weight)
    return scaler, clf


def _scaled(scaler: Any, emb: np.ndarray) -> np.ndarray:
    # clipped and divided by sqrt(dim): a norm comparable to one TF-IDF row, so C means alike
    return np.clip(scaler.transform(emb), -6, 6) / math.sqrt(emb.shape[1])


def aligned_log_proba(clf: Any, X: Any) -> np.ndarray:
    """log P per talk type in TALK_TYPES order (a class missing from training: log 1e-12)."""
    with _one_thread():
        p = clf.predict_proba(X)
    out = np.full((p.shape[0], len(TALK_TYPES)), 1e-12)
    for j, c in enumerate(clf.classes_):
        out[:, TALK_TYPES.index(str(c))] = p[:, j]
    return np.log(np.clip(out, 1e-12, 1.0))


def combine(
    ngram_lp: np.ndarray | None,
    embed_lp: np.ndarray | None,
    config: ClientTalkConfig,
    ngram_vote: np.ndarray | None = None,
    encoder_lp: np.ndarray | None = None,
) -> np.ndarray:
    """Scores (not normalised) per talk type: the weighted product of the experts plus the bias.
    `ngram_vote`: per item, how much the English-only experts' votes count (their language
    coverage: the n-gram and encoder experts)."""
    present = [lp for lp in (ngram_lp, embed_lp, encoder_lp) if lp is not None]
    s = np.zeros((present[0].shape[0], len(TALK_TYPES)))
    vote = ngram_vote[:, None] if ngram_vote is not None else 1.0
    if ngram_lp is not None and config.ngram_weight:
        s += config.ngram_weight * ngram_lp * vote
    if embed_lp is not None and config.embed_weight:
        s += config.embed_weight * embed_lp
    if encoder_lp is not None and config.encoder_weight:
        s += config.encoder_weight * encoder_lp * vote
    return s + np.array([config.bias.get(t, 0.0) for t in TALK_TYPES])


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


class ClientTalkCoder:
    """Codes client utterances change | sustain | neutral."""

    def __init__(
        self,
        config: ClientTalkConfig,
        ngram: tuple[NgramFeaturizer, Any] | None,
        embed: tuple[Any, Any] | None,
        info: dict[str, Any] | None = None,
        folder: Path | None = None,
        encoder: EncoderExpert | None = None,
    ):
        self.config = config
        self.ngram = ngram
        self.embed = embed
        self.encoder = encoder
        self.info = info or {}
        self.folder = folder
        self.name = f"client-talk:{folder}" if folder else "client-talk"
        self._embedder: ClientEmbedder | None = None

    @classmethod
    def fit(
        cls,
        examples: Sequence[ClientExample],
        config: ClientTalkConfig | None = None,
        embeddings: np.ndarray | None = None,
        embedder: ClientEmbedder | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> ClientTalkCoder:
        """`embeddings`: precomputed vectors of the examples (cross-validation computes them once)."""
        config = config or ClientTalkConfig()
        if not examples:
            raise MiLlmError("no labelled client utterances to train on")
        y = [e.talk for e in examples]
        if len(set(y)) < 2:
            raise MiLlmError("training needs at least two different talk types")
        t0 = time.monotonic()
        items = [ClientItem(e.text, e.previous, e.history, e.language) for e in examples]
        ngram = fit_ngram_expert(items, y, config, sample_weight) if config.ngram_weight else None
        embed = None
        self_embedder = None
        if config.embeddings is not None and config.embed_weight:
            if embeddings is None:
                self_embedder = embedder or ClientEmbedder.from_config(config.embeddings)
                embeddings = self_embedder.embed([e.text for e in examples], [e.previous for e in examples])
            embed = fit_embed_expert(embeddings, y, config, sample_weight)
        encoder = None
        if config.encoder is not None and config.encoder_weight:
            encoder = EncoderExpert(EncoderConfig.from_dict(config.encoder), TALK_TYPES).fit(
                [e.text for e in examples],
                [e.previous for e in examples],
                y,
                np.ones(len(examples)) if sample_weight is None else sample_weight,
            )
        if ngram is None and embed is None and encoder is None:
            raise MiLlmError("the client-talk recipe has no expert (every expert's weight is 0)")
        import sklearn

        from mi_llm import __version__

        info = {
            "mi_llm": __version__,
            "sources": dict(Counter(e.source for e in examples)),
            "languages": dict(Counter(e.language for e in examples)),
            "label_counts": dict(Counter(y)),
            "n_examples": len(examples),
            "n_transcripts": len({e.group for e in examples}),
            "seconds": round(time.monotonic() - t0, 1),
            "sklearn": sklearn.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        coder = cls(config, ngram, embed, info, encoder=encoder)
        coder._embedder = self_embedder
        return coder

    def _language_vote(self, items: Sequence[ClientItem]) -> np.ndarray | None:
        if self.embed is None:
            return None  # no language-free expert: the others vote on every language
        seen = self.info.get("languages", {})
        floor = max(1, self.config.min_language_examples)
        return np.array([min(1.0, seen.get(it.lang, 0) / floor) for it in items])

    def scores(
        self, items: Sequence[ClientItem], embeddings: np.ndarray | None = None, progress: Any = None
    ) -> np.ndarray:
        ngram_lp = embed_lp = encoder_lp = None
        if self.ngram is not None:
            feat, clf = self.ngram
            ngram_lp = aligned_log_proba(clf, feat.transform(items))
        if self.embed is not None:
            if embeddings is None:
                if self._embedder is None:
                    self._embedder = ClientEmbedder.from_config(self.config.embeddings or {})
                embeddings = self._embedder.embed(
                    [it.text for it in items], [it.previous for it in items], progress=progress
                )
            scaler, clf = self.embed
            embed_lp = aligned_log_proba(clf, _scaled(scaler, embeddings))
        if self.encoder is not None:
            encoder_lp = self.encoder.log_proba([it.text for it in items], [it.previous for it in items])
        return combine(ngram_lp, embed_lp, self.config, self._language_vote(items), encoder_lp)

    def predict_proba(self, items: Sequence[ClientItem], embeddings: np.ndarray | None = None) -> np.ndarray:
        """Probabilities per talk type (columns: TALK_TYPES), bias included."""
        return softmax(self.scores(items, embeddings))

    def code(
        self, items: Sequence[ClientItem], embeddings: np.ndarray | None = None, progress: Any = None
    ) -> list[str]:
        if not items:
            return []
        s = self.scores(items, embeddings, progress)
        return [TALK_TYPES[int(k)] for k in s.argmax(axis=1)]

    # ------------------------------------------------------------- storage
    def save(self, folder: str | Path, validity: dict[str, Any] | None = None) -> Path:
        import joblib

        from mi_llm.io import atomic_writer, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_writer(folder / "model.joblib", "wb") as f:
            joblib.dump({"ngram": self.ngram, "embed": self.embed}, f, compress=3)
        if self.encoder is not None:
            self.encoder.save(folder / "encoder")
        meta = {
            "format": FORMAT,
            "version": VERSION_WITH_ENCODER if self.encoder is not None else VERSION,
            "labels": list(TALK_TYPES),
            "config": self.config.to_dict(),
            "info": self.info,
        }
        if validity is not None:
            meta["validity"] = validity
        elif self.info.get("validity"):
            meta["validity"] = self.info["validity"]
        write_json(folder / "client_talk.json", meta)
        self.folder = folder
        self.name = f"client-talk:{folder}"
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ClientTalkCoder:
        import joblib

        folder = Path(folder)
        meta_path = folder / "client_talk.json"
        if not meta_path.is_file():
            raise MiLlmError(
                f"{folder}: not a client-talk coder folder (no client_talk.json); train one with "
                f"`mi-llm miti train-client-coder -o {folder}`"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise MiLlmError(f"{meta_path}: unreadable ({e})") from None
        if meta.get("format") != FORMAT:
            raise MiLlmError(f"{meta_path}: not a client-talk coder")
        if meta.get("version") not in READABLE_VERSIONS:
            raise MiLlmError(
                f"{meta_path}: client-talk coder version {meta.get('version')} (this mi-llm reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}); retrain it"
            )
        import sklearn

        saved = meta.get("info", {}).get("sklearn")
        if saved and saved != sklearn.__version__:
            log.warning(
                "client-talk coder %s was trained with scikit-learn %s, this is %s", folder, saved, sklearn.__version__
            )
        try:
            blob = joblib.load(folder / "model.joblib")
        except (OSError, EOFError, ValueError, KeyError, AttributeError, ImportError) as e:
            raise MiLlmError(f"{folder / 'model.joblib'}: unreadable ({type(e).__name__}: {e}); retrain it") from None
        info = dict(meta.get("info", {}))
        if "validity" in meta:
            info["validity"] = meta["validity"]
        name = folder.name
        config = ClientTalkConfig.from_dict(meta["config"])
        encoder = None
        if config.encoder is not None and config.encoder_weight:  # a damaged file: one line from load
            encoder = EncoderExpert.load(folder / "encoder", EncoderConfig.from_dict(config.encoder), TALK_TYPES)
        coder = cls(config, blob["ngram"], blob["embed"], info, folder, encoder=encoder)
        coder.name = f"client-talk:{name}" if folder == shipped_client_coder_dir() else f"client-talk:{folder}"
        return coder


def shipped_client_coder_dir() -> Path:
    """The client-talk coder shipped in the package (trained on AnnoMI)."""
    return Path(__file__).resolve().parents[2] / "resources" / "client_talk"


def load_client_coder(spec: str | Path = "default") -> ClientTalkCoder:
    """`default` (the shipped coder) or a folder written by `train_client_coder`."""
    folder = shipped_client_coder_dir() if str(spec) == "default" else Path(spec).expanduser()
    if not folder.exists():
        raise MiLlmError(
            f"{folder}: no such client-talk coder folder (use `default` or a folder from "
            "`mi-llm miti train-client-coder`)"
        )
    return ClientTalkCoder.load(folder)
