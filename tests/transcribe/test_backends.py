"""Non-HTTP backends go through the shared `mi_llm.llm.backends` interface."""

from __future__ import annotations

import json

import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.llm.backends import Backend, Completion, GenerationConfig
from mi_llm.resources import demo_dialogues
from mi_llm.transcribe import TranscribeConfig, TranscribeGenerationConfig, transcribe_file
from mi_llm.transcribe.clients import BackendClient
from tests.transcribe.conftest import make_dialogue
from tests.transcribe.server import dialogue_in, good_answer


class EchoBackend(Backend):
    """Answers every conversation with a valid rewrite; records its batches."""

    name = "fake"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.configs: list[GenerationConfig] = []
        self.closed = False

    def generate(self, batch, config):
        self.batches.append(len(batch))
        self.configs.append(config)
        out = []
        for messages in batch:
            turns = dialogue_in(messages)
            lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for t in turns for ch in t["text"]) else "en"
            text = good_answer(turns, lang)
            out.append(Completion(text=text, prompt_tokens=100, completion_tokens=len(text) // 4, finish_reason="stop"))
        return out

    def close(self) -> None:
        self.closed = True


def test_local_backend_batches_and_costs_nothing(write_inputs, tmp_path):
    be = EchoBackend()
    client = BackendClient("hf", "fake-model", batch_size=4, instance=be)
    ds = [make_dialogue(f"b{i}", "zh" if i % 2 else "en") for i in range(10)]
    out = tmp_path / "mi.jsonl"
    s = TranscribeConfig(
        backend="hf", model="fake-model", concurrency=4, gen=TranscribeGenerationConfig(temperature=0, max_tokens=300)
    )
    stats = transcribe_file(write_inputs(ds), out, s, client=client)
    assert stats.ok == 10 and stats.cost == 0 and stats.cost_unknown_calls == 0
    assert sum(be.batches) == 10 and max(be.batches) > 1 and max(be.batches) <= 4
    cfg = be.configs[0]
    assert cfg.max_new_tokens == 300 and cfg.do_sample is False
    got = read_dialogues(out)
    assert {d.meta["transcribe"]["backend"] for d in got} == {"hf"}


def test_backend_errors_fail_the_dialogue_not_the_run(write_inputs, tmp_path):
    class Broken(EchoBackend):
        def generate(self, batch, config):
            raise RuntimeError("CUDA out of memory")

    client = BackendClient("hf", "broken", instance=Broken())
    out = tmp_path / "mi.jsonl"
    stats = transcribe_file(
        write_inputs([make_dialogue("x")]), out, TranscribeConfig(backend="hf", model="broken"), client=client
    )
    assert stats.failed == 1
    rec = json.loads((tmp_path / "mi.jsonl.failed.jsonl").read_text())
    assert rec["kind"] == "request" and "CUDA out of memory" in rec["reason"]


@pytest.mark.integration
def test_embedded_model_smoke_run(tmp_path, write_inputs):
    """The embedded gemma-3-270m through the hf backend: far too small to rewrite well, so
    its answers are expected to fail validation, and must land in the failure report."""
    d = demo_dialogues(language="en", style="raw")[0]
    out = tmp_path / "mi.jsonl"
    s = TranscribeConfig(
        backend="hf",
        model="gemma-3-270m",
        concurrency=1,
        max_repairs=0,
        gen=TranscribeGenerationConfig(temperature=0, max_tokens=48),
    )
    stats = transcribe_file(write_inputs([d]), out, s)
    assert stats.ok + stats.failed == 1 and stats.requests == 1 and stats.prompt_tokens > 500
    again = transcribe_file(write_inputs([d]), out, s)
    assert again.requests == 0
