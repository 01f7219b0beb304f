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
    assert e2._model is e._model  # one load of the frozen blocks per process

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


def test_render_window_and_the_embedded_model_context():
    from mi_llm.miti.coders.base import history_window
    from mi_llm.miti.coders.embed import render_window

    window = (("client", "I drink."), ("counselor", "How  much?"), ("client", "A lot,\n most days."))
    assert render_window(window, "ignored", 2) == "Counselor: How much?\nClient: A lot, most days."
    assert render_window((), "I drink.", 10) == "Client: I drink."  # no window: the client's turn alone
    assert render_window((), "", 10) == ""
    assert history_window("What worries you?", "My kids.") == (
        ("counselor", "What worries you?"),
        ("client", "My kids."),
    )
    assert history_window(None, "My kids.") == (("client", "My kids."),)
    # the one-turn context keeps its config (and so its cache key and old coder folders); a window is recorded
    assert "window" not in Embedder().config() and Embedder(window=10).config()["window"] == 10
    items = [Item("So you drink.", "A lot.", "en", window)]
    assert Embedder().contexts_of(items) == ["A lot."]
    assert Embedder(window=10).contexts_of(items)[0].endswith("Client: A lot, most days.")


def test_real_embedded_model_reads_the_window(tmp_path):
    """With a window, the context's tokens are the rendered lines, cut from the left; the
    utterance's own tokens (the pooled ones) come after them."""
    e = Embedder(layer=1, window=10, context_tokens=12, cache_dir=tmp_path)
    e._ensure()
    context = "Client: I drink every night and I think it is fine.\nCounselor: What do you like about it?\nClient: It relaxes me."
    ids, start = e._encode_one("It helps you unwind.", context)
    tail = e._tok.decode(ids[:start])
    assert tail.endswith("It relaxes me.\nCounselor:") and "I drink" not in tail
    assert e._tok.decode(ids[start:]).strip() == "It helps you unwind."
    short = Embedder(layer=1, window=10, cache_dir=tmp_path)
    before = (("client", "I drink."), ("counselor", "Why?"), ("client", "It relaxes me."))
    items = [
        Item("It helps you unwind.", "It relaxes me.", "en", before),
        Item("It helps you unwind.", "It relaxes me.", "en"),
    ]
    v = short.embed([it.text for it in items], short.contexts_of(items))
    assert not np.allclose(v[0], v[1])  # what came before the client's turn is read


def test_dialogue_coding_passes_each_utterance_its_window():
    """`code_dialogues` gives every utterance the conversation before it (earlier turns, the
    same turn's earlier utterances); a plain 3-tuple volley (simulate) has no window."""
    from mi_llm.corpus.schema import Dialogue
    from mi_llm.miti.coders.base import Coder, Result

    class Recorder(Coder):
        def __init__(self):
            self.items = []

        def code_items(self, items, progress=None):
            self.items += items
            return [Result("Q") for _ in items]

    d = Dialogue.model_validate(
        {
            "id": "d",
            "source": "demo",
            "language": "en",
            "style": "mi",
            "turns": [
                {"role": "client", "text": "I drink."},
                {"role": "counselor", "text": "You drink. How much?"},
                {"role": "client", "text": "A lot."},
                {"role": "counselor", "text": "A lot."},
            ],
        }
    )
    rec = Recorder()
    rec.code_dialogues([d], resegment=True, client_talk=None)
    assert [(it.text, it.context, it.window) for it in rec.items] == [
        ("You drink.", "I drink.", (("client", "I drink."),)),
        ("How much?", "I drink.", (("client", "I drink."), ("counselor", "You drink."))),
        (
            "A lot.",
            "A lot.",
            (("client", "I drink."), ("counselor", "You drink."), ("counselor", "How much?"), ("client", "A lot.")),
        ),
    ]
    rec.items = []
    rec.code_volleys([("A lot.", ["So, a lot.", "Tell me more."], "en")])
    assert [it.window for it in rec.items] == [(), (("counselor", "So, a lot."),)]


def test_history_joins_the_vectors_of_the_counselors_earlier_utterances():
    """`embed_items` with history k: the utterance's vector, the counselor's previous
    utterance's (read after the client's turn before it) and the mean of the k - 1 before
    that; zeros where the conversation has none. One embed call: the vectors are shared."""
    from mi_llm.miti.coders.embed import embed_items

    class Recording(FakeEmbedder):
        history = 3

        def embed(self, texts, contexts=None, progress=None):
            self.pairs = list(zip(texts, contexts))
            return super().embed(texts, contexts)

    fake = Recording()
    window = (
        ("counselor", "Hi."),
        ("client", "I drink."),
        ("counselor", "Tell me more."),
        ("client", "Every night."),
        ("counselor", "Every night."),
        ("client", "Yes."),
    )
    items = [Item("You want to stop.", "Yes.", "en", window), Item("Hello.", "", "en")]
    v = embed_items(fake, items)
    one = FakeEmbedder().embed
    assert v.shape == (2, 48) and fake.calls == 1
    assert np.allclose(v[0, :16], one(["You want to stop."])[0])
    assert np.allclose(v[0, 16:32], one(["Every night."])[0])  # the counselor's previous utterance
    assert np.allclose(v[0, 32:], (one(["Tell me more."])[0] + one(["Hi."])[0]) / 2)  # and the ones before it
    assert ("Every night.", "Every night.") in fake.pairs and ("Hi.", "") in fake.pairs  # each with its client turn
    assert not v[1, 16:].any()  # no earlier counselor utterance: zeros
    assert "history" not in Embedder().config() and Embedder(history=2).config()["history"] == 2
