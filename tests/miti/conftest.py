"""Fixtures shared by the coder tests."""

from __future__ import annotations

import pytest

from mi_llm.miti.coders.encoder import EncoderConfig, bundled_encoder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> EncoderConfig:
    """A 2-layer, 32-wide BERT with the bundled encoder's tokenizer: seconds to train."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(bundled_encoder())
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(out)
    tok.save_pretrained(out)
    return EncoderConfig(model=str(out), epochs=2, batch_size=8, lr=1e-3)
