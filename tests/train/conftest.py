"""Tiny randomly initialised models with a small local tokenizer, built in the test (no
downloads), and a small build folder of round samples."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mi_llm.build.exports import export_records, write_llamafactory
from mi_llm.build.samples import build_samples
from mi_llm.corpus.schema import Dialogue
from mi_llm.io import write_jsonl

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = (
    "I feel stressed about work and sleep . How do you feel ? It sounds like you want change . "
    "我 最近 压力 很大 , 睡不好 。 你 觉得 什么 最 重要 ? 听起来 你 想 改变 。"
).split()


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.choices(WORDS, k=12)) for _ in range(200)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    return fast


def make_tiny_model(
    path: Path, kind: str = "gemma3", seed: int = 0, hidden: int = 32, initializer_range: float = 0.02
) -> Path:
    """A tiny model folder that mi_llm.llm.resolve.resolve_model accepts as a local model."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=initializer_range,
    )
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


SYSTEM = (
    "You are an MI counselor. Listen, reflect what you hear, ask open questions, and respect the client's autonomy."
)


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


def slow_twin(fast):
    """A slow (pure-Python, `is_fast` False) tokenizer with the same vocabulary and model as
    `fast`: what Baichuan2's and GLM-4's own tokenizer classes are. Special tokens are split
    off by transformers' slow-tokenizer code and the text between them goes through the same
    normalizer, pre-tokenizer and BPE as the fast one, so the two tokenize any whole text
    alike; only mi_llm's slow path (no character offsets) differs."""
    from transformers import PreTrainedTokenizer

    class SlowTwin(PreTrainedTokenizer):
        def __init__(self) -> None:
            self._model = fast.backend_tokenizer
            self._vocab = fast.get_vocab()
            self._inv = {i: t for t, i in self._vocab.items()}
            added = sorted({t.content for t in fast.added_tokens_decoder.values()})
            super().__init__(
                bos_token=fast.bos_token,
                eos_token=fast.eos_token,
                pad_token=fast.pad_token,
                unk_token=fast.unk_token,
                additional_special_tokens=added,
            )
            self.chat_template = fast.chat_template

        @property
        def vocab_size(self) -> int:
            return len(self._vocab)

        def get_vocab(self) -> dict[str, int]:
            return dict(self._vocab)

        def _tokenize(self, text: str, **kwargs) -> list[str]:
            return self._model.encode(text, add_special_tokens=False).tokens

        def _convert_token_to_id(self, token: str) -> int:
            return self._vocab.get(token, self._vocab[fast.unk_token])

        def _convert_id_to_token(self, index: int) -> str:
            return self._inv[index]

        def convert_tokens_to_string(self, tokens: list[str]) -> str:
            return self._model.decode([self._vocab[t] for t in tokens], skip_special_tokens=False)

    return SlowTwin()


def mixed_samples():
    """Round samples in English and Chinese, with and without history (the system prompt mixes both)."""
    from mi_llm.build.samples import Sample

    out = []
    for lang in ("en", "zh"):
        for rounds in (0, 2):
            if lang == "en":
                hist = [
                    (
                        f"I feel stressed about work {i}, and I can't sleep.",
                        f"How do you feel about that {i}? It sounds hard.",
                    )
                    for i in range(rounds)
                ]
                query, reply = "Maybe I could walk more.", "It sounds like you want change. What would help?"
            else:
                hist = [
                    (f"我最近压力很大{i}，睡不好。", f"听起来你很辛苦{i}。你觉得什么最重要？") for i in range(rounds)
                ]
                query, reply = "也许我可以多走走路。", "听起来你想改变。什么会有帮助？"
            out.append(
                Sample(
                    sample_id=f"{lang}#{rounds + 1}",
                    dialogue_id=lang,
                    round=rounds + 1,
                    language=lang,
                    source="t",
                    system="You are an MI counselor. 你是一位动机式访谈咨询师。",
                    history=hist,
                    query=query,
                    response=reply,
                )
            )
    return out


def assert_slow_path_equals_fast(fast) -> None:
    """encode_sample through the slow path gives exactly the fast path's ids and labels."""
    from mi_llm.llm import templates
    from mi_llm.train.data import IGNORE_INDEX, encode_sample

    slow = slow_twin(fast)
    assert not slow.is_fast and templates._encode_with_offsets(slow, "x") is None  # noqa: SLF001 - the slow path is taken
    for s in mixed_samples():
        for last_only in (True, False):  # rounds records (the reply) and dialogue records (every reply)
            a = encode_sample(s, fast, 4096, last_only=last_only)
            b = encode_sample(s, slow, 4096, last_only=last_only)
            where = f"{s.sample_id} last_only={last_only}"
            # the twin tokenizes the whole text as the fast tokenizer does (which the fast path uses)
            text = templates.render_prompt(fast, s.messages(with_response=True), add_generation_prompt=False)
            assert slow(text, add_special_tokens=False)["input_ids"] == a.input_ids, where
            assert b.input_ids == a.input_ids, where
            assert b.labels == a.labels, where
            assert sum(x != IGNORE_INDEX for x in a.labels) > 0, where


def train_at_high_lr(model: Path, data: Path, out: Path, max_steps: int, **options) -> tuple[list[float], dict]:
    """Train a tiny model `max_steps` steps of 2 samples at lr 1e-2, constant (so the loss
    curve moves within a few steps); (each step's loss, train_config.json)."""
    import json

    from mi_llm.train.config import TrainConfig
    from mi_llm.train.sft import train

    cfg = TrainConfig(
        model=str(model),
        data=str(data),
        output=str(out),
        max_steps=max_steps,
        grad_accum=2,
        lr=1e-2,
        warmup_ratio=0.0,
        lr_scheduler="constant_with_warmup",
        save_steps=100,
        **options,
    )
    train(cfg, show_progress=False)
    log = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    return log, json.loads((out / "train_config.json").read_text())
