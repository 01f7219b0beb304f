"""The encoder expert: a small English sentence encoder fine-tuned end to end + a head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.encoder import BUNDLED_ENCODER, EncoderConfig, EncoderExpert, bundled_encoder, resolve_encoder
from mi_llm.miti.coders.evaluate import metrics
from mi_llm.miti.coders.labels import demo_examples
from mi_llm.miti.coders.trained import TrainedCoder, default_config

EN = demo_examples("en")
ZH = demo_examples("zh")
HELD_OUT = set(sorted({e.group for e in EN})[::4])


def test_recipe_and_model_names(tmp_path):
    cfg = default_config(recipe="encoder")
    assert cfg.encoder is not None and cfg.tuned is None and cfg.features.embeddings is None
    assert cfg.encoder["model"] == BUNDLED_ENCODER
    assert (bundled_encoder() / "config.json").is_file()
    assert resolve_encoder(BUNDLED_ENCODER) == str(bundled_encoder())
    assert resolve_encoder(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder("org/some-encoder") == "org/some-encoder"  # a hub id, left to transformers


def test_embed_encoder_recipe_chooses_on_inner_folds_then_adds_the_encoder(tiny_encoder):
    cfg = default_config(recipe="embed-encoder")
    assert cfg.features.embeddings is not None and cfg.selection is not None
    assert cfg.encoder is not None and cfg.encoder["lora_r"] == 16 and cfg.encoder["lr"] == 5e-4
    # the same path without the embedded model: selection on inner folds, then the encoder on all
    cfg = default_config(recipe="ngram")
    cfg.encoder = tiny_encoder.to_dict()
    coder = TrainedCoder.fit(EN[:200], cfg)
    assert "selection" in coder.info and coder.config.selection is None
    assert coder.info["experts"][-1] == "encoder" and coder.config.encoder == tiny_encoder.to_dict()


def test_coder_with_encoder_expert_saves_and_loads(tiny_encoder, tmp_path):
    cfg = default_config(quick=True)
    cfg.encoder = tiny_encoder.to_dict()
    stages = set()
    coder = TrainedCoder.fit(EN[:200], cfg, progress=lambda s, d, n: stages.add(s))
    assert "fine-tuning" in stages and coder.info["experts"] == ["ngram", "encoder"]
    items = [Item(e.text, e.context, e.language) for e in EN[300:340]]
    p = coder.predict_proba(items)
    assert p.shape == (40, len(coder.labels)) and np.allclose(p.sum(1), 1.0)
    assert not np.allclose(TrainedCoder(coder.config, coder.experts).predict_proba(items), p)
    coder.save(tmp_path / "c")
    coder.save(tmp_path / "c")  # saving again swaps the encoder folder in whole
    assert (tmp_path / "c" / "encoder" / "head.safetensors").is_file()
    assert [f.name for f in tmp_path.joinpath("c").iterdir() if f.name.startswith(".")] == []
    again = TrainedCoder.load(tmp_path / "c")
    q = again.predict_proba(items)
    assert np.allclose(q, p, atol=2e-3)  # the encoder is stored in fp16


def test_unseen_language_still_gets_a_vote(tiny_encoder):
    """Trained on English only, no expert is language-independent: Chinese is coded, not uniform."""
    cfg = default_config(quick=True)
    cfg.encoder = tiny_encoder.to_dict()
    coder = TrainedCoder.fit(EN[:200], cfg)
    p = coder.predict_proba([Item(e.text, e.context, e.language) for e in ZH[:20]])
    assert not np.allclose(p, 1.0 / p.shape[1])


def test_broken_encoder_folder_is_a_clear_error(tiny_encoder, tmp_path):
    cfg = default_config(quick=True)
    cfg.encoder = tiny_encoder.to_dict()
    TrainedCoder.fit(EN[:100], cfg).save(tmp_path / "c")
    (tmp_path / "c" / "encoder" / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MiLlmError, match="encoder: unreadable"):
        TrainedCoder.load(tmp_path / "c")
    (tmp_path / "c" / "encoder" / "head.safetensors").unlink()
    with pytest.raises(MiLlmError, match="head.safetensors missing"):
        TrainedCoder.load(tmp_path / "c")


@pytest.mark.integration
def test_bundled_encoder_codes_held_out_dialogues():
    """all-MiniLM-L6-v2 fine-tuned on 3/4 of the English demo codes (about three minutes; 4 epochs:
    560 utterances are 35 steps an epoch, and 2 epochs stopped at kappa 0.496)."""
    train = [e for e in EN if e.group not in HELD_OUT]
    test = [e for e in EN if e.group in HELD_OUT]
    x = EncoderExpert(EncoderConfig(epochs=4), sorted({e.code or "null" for e in EN}))
    x.fit([e.text for e in train], [e.context for e in train], [e.code or "null" for e in train], [1.0] * len(train))
    lp = x.log_proba([e.text for e in test], [e.context for e in test])
    pred = [x.labels[k] for k in lp.argmax(1)]
    m = metrics([e.code or "null" for e in test], [None if p == "null" else p for p in pred])
    assert m["kappa"] > 0.5, m


def test_cli_trains_and_codes_with_an_encoder_given_by_folder(tiny_encoder, tmp_path):
    from tests.miti.test_coders_cli import run

    r = run("train-coder", "-o", str(tmp_path / "c"), "--recipe", "encoder", "--encoder", tiny_encoder.model)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "c" / "coder.json").read_text())
    assert meta["config"]["encoder"]["model"] == tiny_encoder.model and meta["info"]["experts"] == ["ngram", "encoder"]
    inp = tmp_path / "u.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"id": k, "text": t}) + "\n"
            for k, t in enumerate(["What brings you here today?", "You feel torn about drinking.", "嗯。"])
        )
    )
    r = run("code-utterances", str(inp), "--coder", str(tmp_path / "c"), "-o", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == [0, 1, 2] and all("code" in x for x in rows)


def test_cli_encoder_errors_are_one_line(tmp_path):
    from tests.miti.test_coders_cli import _one_line_error, run

    line = _one_line_error(run("train-coder", "-o", str(tmp_path / "c"), "--encoder", "x"))
    assert "--encoder goes with --recipe encoder" in line and not (tmp_path / "c").exists()
    line = _one_line_error(
        run(
            "train-coder",
            "-o",
            str(tmp_path / "d"),
            "--recipe",
            "encoder",
            "--encoder",
            str(tmp_path / "no-such-encoder"),
        )
    )
    assert "cannot load the encoder" in line and not (tmp_path / "d").exists()
