"""Tiny randomly initialised models with a small local tokenizer, built in the test (no
downloads), and a small build folder of round samples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mi_llm.corpus.schema import Dialogue
from mi_llm.samples import build_samples, export_records, write_llamafactory
from mi_llm.io import write_jsonl

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ("I feel stressed about work and sleep . How do you feel ? It sounds like you want change . "
         "我 最近 压力 很大 , 睡不好 。 你 觉得 什么 最 重要 ? 听起来 你 想 改变 。").split()


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.choices(WORDS, k=12)) for _ in range(200)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def make_tiny_model(path: Path, kind: str = "gemma3", seed: int = 0, hidden: int = 32,
                    initializer_range: float = 0.02) -> Path:
    """A tiny model folder that mi_llm.llm.models.resolve_model accepts as a local model."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  initializer_range=initializer_range)
    torch.manual_seed(seed)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(**common, sliding_window=64, final_logit_softcapping=30.0)
        model = Gemma3ForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_dialogues(n: int, rounds: int = 3, seed: int = 0) -> list[Dialogue]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(1, rounds)):
            turns.append({"role": "client", "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))})
            turns.append({"role": "counselor", "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))})
        out.append(Dialogue.model_validate({"id": f"d{i}", "source": "t", "language": "en", "turns": turns}))
    return out


SYSTEM = ("You are an MI counselor. Listen, reflect what you hear, ask open questions, "
          "and respect the client's autonomy.")


def make_build(path: Path, n: int = 6, rounds: int = 3, seed: int = 0) -> Path:
    """A build folder: samples.train.jsonl + llamafactory/ export (rounds). The system
    prompt is long enough (> 16 tokens) for shared-prefix windows."""
    samples = build_samples(make_dialogues(n, rounds, seed), system_overrides={"en": SYSTEM})
    write_jsonl(path / "samples.train.jsonl", samples)
    write_llamafactory(path / "llamafactory", {"train": export_records(samples, "rounds")}, "rounds")
    return path


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture(scope="session")
def tiny_gemma_learnable(tmp_path_factory) -> Path:
    """A tiny Gemma-3 whose (frozen, tied) head can express confident predictions: at the
    default init (std 0.02, hidden 32) its logits stay within about +-1 whatever LoRA learns,
    so the loss cannot fall far below ln(vocabulary)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gemma3-learnable"), "gemma3", initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture()
def build_dir(tmp_path) -> Path:
    return make_build(tmp_path / "build")
