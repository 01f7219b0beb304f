"""The trained coder: class-weighted logistic regressions over text features, run offline on a CPU.

Experts combined as a product (their log-probabilities added, then renormalised):
- the n-gram expert, a logistic regression: word and character n-grams of the utterance,
  n-grams of the client's previous turn, surface cues (`features.py`);
- the embedding expert (recipe `embed`, the default), a logistic regression over the
  embedded model's frozen hidden states (`embed.py`) and the surface cues;
- or the tuned expert (recipe `tuned`): blocks of the embedded model adapted to the codes
  with LoRA, and a linear head (`tuned.py`);
- or the encoder expert (recipe `encoder`): a small English sentence encoder fine-tuned end
  to end, and a linear head (`encoder.py`).
The embedded model's experts are language-independent: they are what carries over to Chinese.
The n-gram and encoder experts vote on a language in proportion to what they saw of it.
Measured on AnnoMI (docs/miti-coder.md), the product beats one regression over all the
blocks stacked together: the dense block is drowned by 100k sparse n-gram columns there.
Recipe `ngram` (`quick`): the n-gram expert alone.

A coder folder holds:
- `coder.json`: what it is (recipe, training sources and counts, time, versions);
- `model.joblib`: the fitted featurizers and classifiers (a pickle: load only folders you trust);
- `tuned.safetensors`: the tuned expert's adapters and head (recipe `tuned`);
- `encoder/`: the fine-tuned encoder and its head (recipe `encoder`);
- `globals.json`: the global-ratings regression (`globals_model.py`);
- other heads (`coder.json` "heads": {name: {"path": ..., ...}}), e.g. a client-talk model,
  each in its own file or subfolder: kept through load and save (`TrainedCoder.heads`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.base import Coder, Item, Progress, Result
from mi_llm.miti.coders.embed import Embedder, embed_items
from mi_llm.miti.coders.encoder import EncoderConfig, EncoderExpert
from mi_llm.miti.coders.features import FeatureConfig, Featurizer
from mi_llm.miti.coders.globals_model import GlobalsModel
from mi_llm.miti.coders.labels import NULL, Example
from mi_llm.miti.coders.product import (
    REFLECTIONS,
    _weights,
    aligned_log_proba,
    combine,
    expert_configs,
    fit_classifier,
    language_weights,
    refine_features,
)
from mi_llm.miti.coders.tuned import TunedConfig, TunedExpert
from mi_llm.registry import Registry

log = logging.getLogger(__name__)

FORMAT = "mi-llm-miti-coder"
VERSION = 3
READABLE_VERSIONS = (2, 3)  # 3 added the combination fields and the refine expert

# (stage, done, total): stages are "loading", "embeddings", "classifier" (one step per expert), "globals".
StageProgress = Callable[[str, int, int], None]

# Automatic labels (Welivita: propagated; MIBot: GPT-4o) count less than expert/author codes.
# 0.2 rather than 0.5 (measured, docs/miti-coder.md): AnnoMI kappa 0.570 -> 0.582 and Chinese
# (trained on English) 0.595 -> 0.655, the out-of-domain proxy unchanged.
DEFAULT_SOURCE_WEIGHTS = {"annomi": 1.0, "demo": 1.0, "welivita": 0.2, "mibot": 0.2}


@dataclass
class CoderConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    C: float = 4.0  # the n-gram expert's inverse regularisation
    C_embed: float = 3.0  # the embedding expert's
    class_weight: str | None = "balanced"
    max_iter: int = 300
    # With an embedding expert, the n-gram expert's vote on a language counts in proportion
    # to its training utterances in that language, in full from this many on: n-grams
    # learnt in English say nothing about Chinese (measured: they pull cross-lingual kappa
    # from 0.60 down to 0.47), while the embedded model's representations carry over.
    min_language_examples: int = 300
    source_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_WEIGHTS))
    tuned: dict[str, Any] | None = None  # TunedConfig of the tuned expert; None = none
    encoder: dict[str, Any] | None = None  # EncoderConfig of the encoder expert; None = none
    # How the experts' log-probabilities are combined (chosen on inner folds by `selection`):
    # a weight per expert name (absent = 1), an additive bias per label (rare codes such as
    # PwP and Seek lose macro-F1 to the frequent ones otherwise), and coarse-then-fine: a
    # dedicated SR-vs-CR expert, trained on reflections only, re-decides simple vs complex.
    expert_weights: dict[str, float] = field(default_factory=dict)
    class_bias: dict[str, float] = field(default_factory=dict)
    refine_reflections: bool = False
    C_refine: float = 4.0
    # SelectionConfig (selection.py): choose C, expert weights, refinement and biases by
    # cross-validation inside the training data before the final fit; None = as given.
    selection: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CoderConfig:
        d = dict(d)
        d["features"] = FeatureConfig.from_dict(d.get("features", {}))
        return cls(**d)


RECIPES: Registry[str] = Registry("coder recipe")  # name -> what its experts are (default_config builds it)
RECIPES.add("embed", "n-grams x frozen embeddings of the embedded model")
RECIPES.add("tuned", "n-grams x the tuned embedded-model expert")
RECIPES.add("encoder", "n-grams x a fine-tuned English encoder")
RECIPES.add("embed-encoder", "n-grams x frozen embeddings x a LoRA-tuned English encoder (best on English)")
RECIPES.add("ngram", "n-grams only")


def default_config(quick: bool = False, embeddings: bool = True, recipe: str = "embed") -> CoderConfig:
    """The shipped recipes: `embed` (n-grams x frozen embeddings, the default), `tuned` (n-grams x
    the tuned expert: better on English, worse on Chinese when trained on English only, see
    docs/miti-coder.md), `encoder` (n-grams x a fine-tuned English encoder: the best on
    English, no help on Chinese), `embed-encoder` (the `embed` recipe, chosen on inner folds,
    times an encoder expert with LoRA: nested AnnoMI kappa 0.612 against 0.592, but worse on
    the demo's written dialogues), `ngram` (n-grams only: about a minute; also what `quick`
    or no `embeddings` give)."""
    RECIPES.get(recipe)  # an unknown recipe: one line naming the choices
    from mi_llm.miti.coders.selection import SelectionConfig

    feats = FeatureConfig()
    if quick:
        return CoderConfig(features=feats)
    # inner cross-validation chooses C, the expert weights, the refinement and the biases
    selected = SelectionConfig().to_dict()
    if not embeddings or recipe == "ngram":
        return CoderConfig(features=feats, selection=selected)
    if recipe in ("embed", "embed-encoder"):
        feats.embeddings = Embedder().config()
        # the encoder's settings are fixed (its tuning costs minutes): those graded by the nested
        # run in docs/miti-coder.md; the inner folds choose the rest, without it
        encoder = EncoderConfig(lora_r=16, lr=5e-4).to_dict() if recipe == "embed-encoder" else None
        return CoderConfig(features=feats, selection=selected, encoder=encoder)
    if recipe == "encoder":
        return CoderConfig(features=feats, encoder=EncoderConfig().to_dict())
    return CoderConfig(features=feats, tuned=TunedConfig().to_dict())


@dataclass
class Expert:
    name: str  # "ngram", "embed", or "refine" (SR vs CR only)
    featurizer: Featurizer
    classifier: Any


def fit_refine_expert(
    texts: Sequence[str], contexts: Sequence[str], y: np.ndarray, weights: np.ndarray, config: CoderConfig
) -> Expert:
    """Simple vs complex reflection, trained on the reflections alone (coarse-then-fine)."""
    keep = np.isin(y, REFLECTIONS)
    feat = Featurizer(refine_features(config))
    X = feat.fit_transform([t for t, k in zip(texts, keep) if k], [c for c, k in zip(contexts, keep) if k])
    return Expert("refine", feat, fit_classifier(X, y[keep], weights[keep], config.C_refine, config))


class TrainedCoder(Coder):
    def __init__(
        self,
        config: CoderConfig,
        experts: list[Expert],
        globals_model: GlobalsModel | None = None,
        info: dict[str, Any] | None = None,
        folder: Path | None = None,
        tuned: TunedExpert | None = None,
        encoder: EncoderExpert | None = None,
    ):
        self.config = config
        self.experts = experts
        self.tuned = tuned
        self.encoder = encoder
        self.globals_model = globals_model
        self.info = info or {}
        self.folder = folder
        self.name = self._name()
        # Other models kept in the same folder (e.g. a client-talk head): {name: {"path": a file
        # or folder inside it, ...what that head's loader needs}}. This class codes with the MITI
        # experts only; it keeps the entries through load and save, and save leaves their files.
        self.heads: dict[str, dict[str, Any]] = {}
        self._embedder: Embedder | None = None

    def _name(self) -> str:
        """`<name> <version>` for a released coder (coder.json info.release), else its folder."""
        release = self.info.get("release") or {}
        if release.get("name") and release.get("version"):
            return f"{release['name']} {release['version']}"
        return f"trained:{self.folder}" if self.folder else "trained"

    @property
    def validity(self) -> str | None:
        """One line: what the coder scored on transcripts it never saw (coder.json info.validity)."""
        v = self.info.get("validity") or {}
        return v.get("summary")

    # ------------------------------------------------------------- training
    @classmethod
    def fit(
        cls,
        examples: Sequence[Example],
        config: CoderConfig | None = None,
        dialogues_for_globals: Sequence[Any] = (),
        progress: StageProgress | None = None,
        embedder: Embedder | None = None,
        tuned_embedder: Embedder | None = None,
    ) -> TrainedCoder:
        """`embedder`, `tuned_embedder`: the embedded model for the embedding expert and for the
        tuned expert's frozen blocks, when the caller keeps one (cross-validation reuses them).
        With `config.selection`, inner cross-validation over the examples' groups first chooses
        the combination (`selection.select`); the chosen config is the coder's."""
        config = config or default_config()
        if not examples:
            raise MiLlmError("no labelled utterances to train on")
        t0 = time.monotonic()
        texts = [e.text for e in examples]
        contexts = [e.context for e in examples]
        y = np.array([e.code or NULL for e in examples])
        if len(set(y)) < 2:
            raise MiLlmError("training needs at least two different codes")
        weights = _weights(examples, config)
        if not weights.any():
            raise MiLlmError(f"every training utterance would weigh 0 (source weights {config.source_weights})")
        emb = None
        self_embedder = None
        if config.features.embeddings is not None:
            self_embedder = embedder or Embedder.from_config(config.features.embeddings)
            emb = embed_items(
                self_embedder, examples, progress=(lambda d, n: progress("embeddings", d, n)) if progress else None
            )
        selection_record = None
        if config.selection is not None:
            from mi_llm.miti.coders.selection import select

            config, selection_record = select(examples, config, emb, progress=progress)
        specs = expert_configs(config)
        experts = []
        for k, (name, fconf, C) in enumerate(specs):
            if progress:
                progress("classifier", k, len(specs))
            feat = Featurizer(fconf)
            X = feat.fit_transform(texts, contexts, emb if fconf.embeddings is not None else None)
            experts.append(Expert(name, feat, fit_classifier(X, y, weights, C, config)))
        if config.refine_reflections and set(REFLECTIONS) <= set(y.tolist()):
            experts.append(fit_refine_expert(texts, contexts, y, weights, config))
        if progress:
            progress("classifier", len(specs), len(specs))
        tuned = None
        if config.tuned is not None:
            tconf = TunedConfig.from_dict(config.tuned)
            tuned = TunedExpert(tconf, [str(c) for c in experts[0].classifier.classes_], embedder=tuned_embedder)
            tuned.fit(texts, contexts, y.tolist(), _weights(examples, config, tconf.source_weights), progress=progress)
        encoder = None
        if config.encoder is not None:
            econf = EncoderConfig.from_dict(config.encoder)
            encoder = EncoderExpert(econf, [str(c) for c in experts[0].classifier.classes_])
            encoder.fit(
                texts, contexts, y.tolist(), _weights(examples, config, econf.source_weights), progress=progress
            )
        gm = None
        if dialogues_for_globals:
            if progress:
                progress("globals", 0, 1)
            gm = GlobalsModel.fit(dialogues_for_globals)
            if progress:
                progress("globals", 1, 1)
        import sklearn

        info = {
            "sources": dict(Counter(e.source for e in examples)),
            "languages": dict(Counter(e.language for e in examples)),
            "label_counts": {k: int(v) for k, v in Counter(y.tolist()).items()},
            "n_examples": len(examples),
            "experts": [x.name for x in experts] + [x.name for x in (tuned, encoder) if x],
            **({"selection": selection_record} if selection_record else {}),
            "seconds": round(time.monotonic() - t0, 1),
            "sklearn": sklearn.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        coder = cls(config, experts, gm, info, tuned=tuned, encoder=encoder)
        coder._embedder = self_embedder
        return coder

    # ------------------------------------------------------------- coding
    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.experts[0].classifier.classes_]

    def _embed(self, items: Sequence[Item], progress: Progress | None) -> np.ndarray | None:
        if self.config.features.embeddings is None:
            return None
        if self._embedder is None:
            self._embedder = Embedder.from_config(self.config.features.embeddings)
        return embed_items(self._embedder, items, progress=progress)

    def predict_proba(self, items: Sequence[Item], progress: Progress | None = None) -> np.ndarray:
        """Class probabilities (columns: `labels`): the experts' normalised product."""
        texts = [it.text for it in items]
        contexts = [it.context for it in items]
        emb = self._embed(items, progress)
        # language-bound experts (n-grams, the English encoder) vote in proportion to what they saw
        # of the item's language, when a language-independent expert is there to carry the rest
        language_free = len(self.experts) > 1 or self.tuned is not None
        weights = self._language_weights(items) if language_free or self.encoder else np.ones(len(items))
        if not language_free:
            weights = np.where(weights > 0, weights, 1.0)  # an unseen language: some vote beats none
        labels = self.labels
        log_probas: dict[str, np.ndarray] = {}
        refine = None
        for x in self.experts:
            if x.name == "refine" and not self.config.refine_reflections:
                continue
            X = x.featurizer.transform(texts, contexts, emb if x.featurizer.config.embeddings is not None else None)
            if x.name == "refine":
                refine = aligned_log_proba(x.classifier, X, REFLECTIONS)
            else:
                log_probas[x.name] = aligned_log_proba(x.classifier, X, labels)
        logp = combine(log_probas, labels, self.config, weights, refine)
        if self.tuned is not None:
            logp += self.tuned.log_proba(texts, contexts, progress=progress)
        if self.encoder is not None:
            logp += self.encoder.log_proba(texts, contexts, progress=progress) * weights[:, None]
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(axis=1, keepdims=True)

    def _language_weights(self, items: Sequence[Item]) -> np.ndarray:
        return language_weights(
            [it.lang for it in items], self.info.get("languages", {}), self.config.min_language_examples
        )

    def code_items(self, items: Sequence[Item], progress: Progress | None = None) -> list[Result]:
        if not items:
            return []
        proba = self.predict_proba(items, progress)
        labels = self.labels
        out = []
        for row in proba:
            k = int(np.argmax(row))
            code = None if labels[k] == NULL else labels[k]
            out.append(Result(code=code, extra={"confidence": round(float(row[k]), 4)}))
        if progress and self.config.features.embeddings is None and self.tuned is None and self.encoder is None:
            progress(len(items), len(items))
        return out

    # ------------------------------------------------------------- storage
    def save(self, folder: str | Path) -> Path:
        import joblib

        from mi_llm.io import atomic_writer, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for x in self.experts:
            for vec in x.featurizer._vec.values():
                vec.stop_words_ = None  # the terms cut by min_df/max_features: introspection only, and most of the size
        with atomic_writer(folder / "model.joblib", "wb") as f:
            joblib.dump({"experts": [(x.name, x.featurizer, x.classifier) for x in self.experts]}, f, compress=3)
        if self.tuned is not None:
            self.tuned.save(folder / "tuned.safetensors")
        if self.encoder is not None:
            self.encoder.save(folder / "encoder")
        if self.globals_model is not None:
            self.globals_model.save(folder / "globals.json")
        write_json(
            folder / "coder.json",
            {
                "format": FORMAT,
                "version": VERSION,
                "kind": "trained",
                "labels": self.labels,
                "config": self.config.to_dict(),
                "info": self.info,
                "heads": self.heads,
            },
        )
        self.folder = folder
        self.name = self._name()
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TrainedCoder:
        import joblib

        folder = Path(folder)
        meta_path = folder / "coder.json"
        if not meta_path.is_file():
            raise MiLlmError(
                f"{folder}: not a coder folder (no coder.json); train one with `mi-llm miti train-coder -o {folder}`"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise MiLlmError(f"{meta_path}: unreadable ({e})") from None
        if meta.get("format") != FORMAT or meta.get("kind") != "trained":
            raise MiLlmError(f"{meta_path}: not a trained MITI coder")
        if meta.get("version") not in READABLE_VERSIONS:
            raise MiLlmError(
                f"{meta_path}: coder format version {meta.get('version')} (this mi-llm reads {VERSION}); retrain it"
            )
        import sklearn

        saved = meta.get("info", {}).get("sklearn")
        if saved and saved != sklearn.__version__:
            log.warning("coder %s was trained with scikit-learn %s, this is %s", folder, saved, sklearn.__version__)
        try:
            blob = joblib.load(folder / "model.joblib")
        except (OSError, EOFError, ValueError, KeyError, AttributeError, ImportError) as e:
            raise MiLlmError(
                f"{folder / 'model.joblib'}: unreadable ({type(e).__name__}: {e}); retrain the coder"
            ) from None
        gm = GlobalsModel.load(folder / "globals.json") if (folder / "globals.json").is_file() else None
        experts = [Expert(n, f, c) for n, f, c in blob["experts"]]
        config = CoderConfig.from_dict(meta["config"])
        from safetensors import SafetensorError

        def read(path: Path, load: Callable[[], Any]) -> Any:
            try:
                return load()
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                raise MiLlmError(f"{path}: unreadable ({type(e).__name__}: {e}); retrain the coder") from None

        tuned = encoder = None
        if (tuned_cfg := config.tuned) is not None:
            path = folder / "tuned.safetensors"
            tuned = read(path, lambda: TunedExpert.load(path, TunedConfig.from_dict(tuned_cfg), meta["labels"]))
        if (encoder_cfg := config.encoder) is not None:
            path = folder / "encoder"
            encoder = EncoderExpert.load(path, EncoderConfig.from_dict(encoder_cfg), meta["labels"])  # errors: one line
        coder = cls(config, experts, gm, meta.get("info", {}), folder, tuned=tuned, encoder=encoder)
        coder.heads = dict(meta.get("heads") or {})
        return coder
