"""The tuned expert: blocks of the embedded model adapted to the codes with LoRA + a head."""

from __future__ import annotations

import numpy as np
import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm.tiny import make_tiny_model
from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.evaluate import metrics
from mi_llm.miti.coders.labels import demo_examples
from mi_llm.miti.coders.trained import TrainedCoder, default_config
from mi_llm.miti.coders.tuned import TunedConfig, TunedExpert

EN = demo_examples("en")
HELD_OUT = set(sorted({e.group for e in EN})[::4])


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> TunedConfig:
    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", layers=3)
    return TunedConfig(model=str(path), frozen_layers=1, tuned_layers=2, rank=4, epochs=2, batch_size=8)


def test_recipes():
    tuned = default_config(recipe="tuned")
    assert tuned.tuned is not None and tuned.features.embeddings is None
    assert default_config(quick=True).tuned is None and default_config(quick=True).features.embeddings is None
    assert default_config().features.embeddings is not None and default_config().tuned is None
    with pytest.raises(MiLlmError, match="unknown coder recipe"):
        default_config(recipe="bogus")


def test_low_weight_sources_are_sampled_not_all_embedded(tiny_cfg):
    ex = EN[:120]
    emb = tiny_cfg.embedder(keep_states=True)
    x = TunedExpert(tiny_cfg, sorted({e.code or "null" for e in ex}), embedder=emb)
    weights = [0.0] * 60 + [1.0] * 60  # weight 0: never sampled, so never run through the model
    x.fit([e.text for e in ex], [e.context for e in ex], [e.code or "null" for e in ex], weights)
    assert len(emb._states) == len({(e.text, e.context) for e in ex[60:]})


def test_coder_with_tuned_expert_saves_and_loads(tiny_cfg, tmp_path):
    cfg = default_config(quick=True)
    cfg.tuned = tiny_cfg.to_dict()
    ex = EN[:200]
    stages = set()
    coder = TrainedCoder.fit(ex, cfg, progress=lambda s, d, n: stages.add(s))
    assert {"embeddings", "tuning"} <= stages and coder.info["experts"] == ["ngram", "tuned"]
    items = [Item(e.text, e.context, e.language) for e in EN[300:340]]
    p = coder.predict_proba(items)
    assert p.shape == (40, len(coder.labels)) and np.allclose(p.sum(1), 1.0)
    # the tuned expert takes part: the product differs from the n-gram expert alone
    assert not np.allclose(TrainedCoder(coder.config, coder.experts).predict_proba(items), p)
    coder.save(tmp_path / "c")
    assert (tmp_path / "c" / "tuned.safetensors").is_file()
    again = TrainedCoder.load(tmp_path / "c")
    assert np.allclose(again.predict_proba(items), p, atol=1e-5)


def test_broken_adapter_file_is_a_clear_error(tiny_cfg, tmp_path):
    cfg = default_config(quick=True)
    cfg.tuned = tiny_cfg.to_dict()
    TrainedCoder.fit(EN[:100], cfg).save(tmp_path / "c")
    (tmp_path / "c" / "tuned.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MiLlmError, match="tuned.safetensors: unreadable"):
        TrainedCoder.load(tmp_path / "c")


@pytest.mark.integration
def test_real_model_tuned_expert_codes_held_out_dialogues():
    """gemma-3-270m, 4 frozen + 2 tuned blocks, on 3/4 of the English demo codes (about a minute)."""
    train = [e for e in EN if e.group not in HELD_OUT]
    test = [e for e in EN if e.group in HELD_OUT]
    cfg = TunedConfig(frozen_layers=4, tuned_layers=2, epochs=2)
    x = TunedExpert(cfg, sorted({e.code or "null" for e in EN}))
    x.fit([e.text for e in train], [e.context for e in train], [e.code or "null" for e in train], [1.0] * len(train))
    lp = x.log_proba([e.text for e in test], [e.context for e in test])
    pred = [x.labels[k] for k in lp.argmax(1)]
    m = metrics([e.code or "null" for e in test], [None if p == "null" else p for p in pred])
    assert m["kappa"] > 0.5, m
