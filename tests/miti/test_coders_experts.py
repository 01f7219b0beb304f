"""The two-expert trained coder (n-grams x embeddings) and the embedding cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.embed import Embedder, EmbeddingCache
from mi_llm.miti.coders.labels import demo_examples
from mi_llm.miti.coders.trained import TrainedCoder, default_config, expert_configs


class FakeEmbedder:
    """Stands in for the embedded model: a fixed random projection of character counts."""

    def __init__(self):
        self.calls = 0

    def config(self):
        return {"model": "fake", "layer": 1, "max_tokens": 8, "context": True, "context_tokens": 8}

    def embed(self, texts, contexts=None, progress=None):
        self.calls += 1
        out = np.zeros((len(texts), 16), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t:
                out[i, int(hashlib.md5(ch.encode()).hexdigest(), 16) % 16] += 1
        return out


def test_recipe_experts():
    assert [n for n, _, _ in expert_configs(default_config(quick=True))] == ["ngram"]
    full = default_config(recipe="embed")
    names = [(n, f.words, f.embeddings is not None) for n, f, _ in expert_configs(full)]
    assert names == [("ngram", True, False), ("embed", False, True)]
    # the tuned recipe: the n-gram expert here, the tuned expert beside it (test_coders_tuned.py)
    assert [n for n, _, _ in expert_configs(default_config(recipe="tuned"))] == ["ngram"]


def _fit_two_experts():
    """A coder with both experts, the embedding one on a fake embedder (no model load)."""
    ex = demo_examples("en")[:400]
    cfg = default_config(quick=True)
    fake = FakeEmbedder()
    cfg.features.embeddings = fake.config()
    return ex, fake, TrainedCoder.fit(ex, cfg, embedder=fake)


def test_product_of_experts_is_a_distribution():
    ex, fake, coder = _fit_two_experts()
    assert [x.name for x in coder.experts] == ["ngram", "embed"]
    items = [Item(e.text, e.context, e.language) for e in ex[:30]]
    p = coder.predict_proba(items)
    assert p.shape == (30, len(coder.labels)) and np.allclose(p.sum(1), 1.0)
    # the product differs from the n-gram expert alone
    only = TrainedCoder(coder.config, coder.experts[:1])
    only._embedder = fake
    assert not np.allclose(only.predict_proba(items), p)
    assert fake.calls >= 2


def test_embedding_cache_round_trip(tmp_path):
    c = EmbeddingCache(tmp_path / "c")
    c.put_many(["a", "b"], np.array([[1, 2], [3, 4]], dtype=np.float32))
    again = EmbeddingCache(tmp_path / "c")
    assert again.get("b").tolist() == [3, 4] and again.get("z") is None
    (tmp_path / "c" / "shard-broken.npz").write_bytes(b"not a zip")
    assert EmbeddingCache(tmp_path / "c").get("a").tolist() == [1, 2]  # a broken shard is skipped


@pytest.mark.integration
def test_real_embedded_model_vectors_are_cached(tmp_path):
    """The embedded gemma-3-270m on a few utterances: shapes, context matters, the cache answers."""
    e = Embedder(layer=2, cache_dir=tmp_path)
    texts = ["What brings you here today?", "你觉得戒烟对你意味着什么？", "It sounds like you're worried."]
    ctx = ["", "我老婆让我来的。", "I keep coughing."]
    v = e.embed(texts, ctx)
    assert v.shape == (3, e.dim) and np.isfinite(v).all()
    v2 = e.embed(texts[2:], ["Something else entirely."])
    assert not np.allclose(v[2], v2[0])  # the client's turn is read
    e2 = Embedder(layer=2, cache_dir=tmp_path)  # a new process would start like this
    e2._ensure()

    class NoCall:
        config = e2._model.config

        def __call__(self, *a, **k):
            raise AssertionError("the model ran although every vector was cached")

    e2._model = NoCall()
    assert np.allclose(e2.embed(texts, ctx), v)


def test_ngram_expert_is_silent_on_a_language_it_never_saw():
    ex, fake, coder = _fit_two_experts()
    zh = [Item("你觉得呢？", "", "zh"), Item("你已经坚持了两周。", "", "zh")]
    embed_only = TrainedCoder(coder.config, coder.experts[1:])
    embed_only._embedder = fake
    assert np.allclose(coder.predict_proba(zh), embed_only.predict_proba(zh))
    en = [Item("What do you think?", "", "en")]
    assert not np.allclose(coder.predict_proba(en), embed_only.predict_proba(en))
