"""A tiny randomly initialised Gemma-3 model with a locally trained tokenizer, for tests.

No download: the byte-level BPE tokenizer is trained in milliseconds on a few sentences
(any text still encodes, byte by byte), and the model has a few thousand parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

from mi_llm.llm.templates import FAMILIES

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
_CORPUS = [
    "You are a counselor who practises motivational interviewing.",
    "How do you feel about your smoking? I want to quit but it is hard.",
    "It sounds like you are ready to make a change.",
    "你好，我最近压力很大，睡不好觉。听起来你很辛苦。",
    "user model system assistant",
]


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    tok.chat_template = FAMILIES["gemma"].template
    return tok


def make_tiny_model(out: str | Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> Path:
    """Write a tiny Gemma-3 text model folder (config.json, safetensors, tokenizer) to `out`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out = Path(out)
    tok = make_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=1024,
        sliding_window=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "mi_llm_model.json").write_text(json.dumps({"name": "tiny", "family": "gemma"}))
    return out
