"""Streaming engines, the stop-string trimmer and the single-worker queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mi_llm.llm.backends.base import GenerationConfig, StopTrimmer
from mi_llm.serve.engine import BackendEngine, EchoEngine, Finish, build_engine
from mi_llm.serve.protocol import conversation
from mi_llm.serve.worker import GenerationWorker, QueueFull

MSGS = [{"role": "system", "content": "You are a counselor."}, {"role": "user", "content": "I want to quit smoking"}]


def test_stop_trimmer_never_leaks_part_of_a_stop_string():
    t = StopTrimmer(["<end>"])
    out = "".join(t.feed(p) for p in ["Hello <e", "n", "d> more"]) + t.flush()
    assert out == "Hello " and t.stopped
    t = StopTrimmer(["<end>"])
    out = "".join(t.feed(p) for p in ["a <e", "xtra"]) + t.flush()
    assert out == "a <extra"


def test_echo_engine_streams_words_and_respects_max_tokens():
    items = list(EchoEngine().stream(MSGS, GenerationConfig(max_new_tokens=3)))
    assert items[:-1] == ["You", " said:", " I"] and items[-1].reason == "length"
    cancel = threading.Event()
    cancel.set()
    assert list(EchoEngine().stream(MSGS, GenerationConfig(), cancel))[-1].reason == "cancelled"


def test_hf_stream_equals_backend_generate(tiny_hf_engine):
    """Streaming the hf backend gives the text its own (batched) generate gives, greedy."""
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False)
    items = list(tiny_hf_engine.stream(MSGS, cfg))
    finish = items[-1]
    assert isinstance(finish, Finish) and finish.completion_tokens > 0
    [expected] = tiny_hf_engine.backend.generate([MSGS], cfg)
    assert "".join(items[:-1]) == expected.text
    assert finish.prompt_tokens == expected.prompt_tokens


def test_context_overflow_drops_oldest_exchanges(tiny_hf_engine):
    long_history = []
    for i in range(40):
        long_history += [
            {"role": "user", "content": f"turn {i} " + "word " * 20},
            {"role": "assistant", "content": "I hear you " * 10},
        ]
    msgs = conversation("sys", long_history, "latest")
    cfg = GenerationConfig(max_new_tokens=8)
    from mi_llm.llm.templates import encode_prompt

    assert len(encode_prompt(tiny_hf_engine.backend.tokenizer, msgs)) > 1024  # the tiny model's context
    items = list(tiny_hf_engine.stream(msgs, cfg))
    assert items[-1].prompt_tokens + 8 <= 1024


def test_backend_without_streaming_sends_one_piece():
    from mi_llm.llm.backends.base import Backend, Completion

    class Whole(Backend):
        name = "whole"

        def generate(self, batch, config):
            return [Completion("whole reply", 5, 2, "stop") for _ in batch]

    items = list(BackendEngine(Whole(), "w").stream(MSGS, GenerationConfig()))
    assert items == ["whole reply", Finish("stop", 5, 2)]


def test_unknown_backend():
    from mi_llm.errors import MiLlmError

    with pytest.raises(MiLlmError, match="unknown backend"):
        build_engine("nosuch", "x")


def test_conversation_merges_same_role_turns_and_opens_with_user():
    msgs = conversation(
        "S",
        [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        "c",
    )
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "a\n\nb\n\nc"}]


def test_worker_serves_in_order_and_bounds_the_queue():
    gate = threading.Event()

    class Gated(EchoEngine):
        order: list[str] = []

        def stream(self, messages, config, cancel=None):
            gate.wait(60)  # set by the test once the queue is full
            self.order.append(messages[-1]["content"])
            yield from super().stream(messages, config, cancel)

    engine = Gated()
    worker = GenerationWorker(engine, max_queue=3)

    async def run():
        async def one(text):
            out = ""
            async for item in worker.stream([{"role": "user", "content": text}], GenerationConfig()):
                if not isinstance(item, Finish):
                    out += item
            return out

        tasks = [asyncio.create_task(one(t)) for t in ("a", "b", "c")]
        for _ in range(1000):  # until all three are submitted (an event, not a guess at timing)
            if worker.pending == 3:
                break
            await asyncio.sleep(0.01)
        assert worker.pending == 3
        with pytest.raises(QueueFull):
            worker.submit([{"role": "user", "content": "d"}], GenerationConfig())
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(run()) == ["You said: a", "You said: b", "You said: c"]
    assert engine.order == ["a", "b", "c"] and worker.pending == 0
    worker.close()


def test_fair_queue_takes_clients_in_turn():
    from mi_llm.serve.worker import FairQueue, _Job

    q = FairQueue()
    jobs = [_Job([], GenerationConfig(), None, None, client) for client in ("a", "a", "a", "b", "c", "b")]  # type: ignore[arg-type]
    for j in jobs:
        q.put(j)
    taken = [q.get() for _ in jobs]
    # a's second and third requests wait for b's and c's first
    assert [jobs.index(j) for j in taken] == [0, 3, 4, 1, 5, 2]
    q.close(1)
    assert q.get() is None


def test_worker_runs_the_engines_concurrency_at_once():
    barrier = threading.Barrier(3, timeout=30)

    class Together(EchoEngine):
        def stream(self, messages, config, cancel=None):
            barrier.wait()  # passes only when 3 streams run at the same time
            yield from super().stream(messages, config, cancel)

    worker = GenerationWorker(Together(concurrency=3), max_queue=10)
    assert worker.concurrency == 3

    async def run():
        async def one(text):
            out = ""
            async for item in worker.stream([{"role": "user", "content": text}], GenerationConfig(), client=text):
                if not isinstance(item, Finish):
                    out += item
            return out

        return await asyncio.gather(*(one(t) for t in ("a", "b", "c")))

    assert asyncio.run(run()) == ["You said: a", "You said: b", "You said: c"]
    worker.close()
