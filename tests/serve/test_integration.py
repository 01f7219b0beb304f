"""The server on the real embedded model (gemma-3-270m GGUF through llama.cpp), short replies."""

from __future__ import annotations

import pytest

from mi_llm.serve.api import BackgroundServer, ServeConfig, create_app
from mi_llm.serve.sessions import SessionStore
from tests.conftest import require_setup
from tests.serve.conftest import openai_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llama_engine():
    from mi_llm.llm.llamacpp_runtime import build_fingerprint
    from mi_llm.serve.engine import build_engine

    # installed by the set-up (a skip fails under CI); a build that does not work on this CPU
    # is an error from build_engine naming the crash, not a skip
    require_setup(build_fingerprint() is not None, "llama-cpp-python (make venv builds it)")

    engine = build_engine("llamacpp", None, n_ctx=2048)
    yield engine
    engine.close()


def test_embedded_model_plain_and_streaming(llama_engine, tmp_path):
    store = SessionStore(tmp_path / "s.sqlite3")
    app = create_app(llama_engine, ServeConfig(temperature=0.0), store)
    messages = [{"role": "user", "content": "I want to cut down on sugar but I love dessert."}]
    with BackgroundServer(app) as server:
        client = openai_client(server, key=None)
        plain = client.chat.completions.create(model="gemma-3-270m", messages=messages, max_tokens=12)
        text = plain.choices[0].message.content
        assert text.strip() and plain.usage.completion_tokens <= 12 and plain.usage.prompt_tokens > 20
        assert plain.choices[0].finish_reason in ("stop", "length")
        stream = client.chat.completions.create(
            model="gemma-3-270m", messages=messages, max_tokens=12, stream=True, extra_body={"session_id": "integ"}
        )
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 2  # token by token, not one block
        assert "".join(pieces) == text  # greedy: streaming gives the same reply
    assert len(store.history("integ")) == 2
    store.close()


def test_streamed_reply_matches_the_backend_generate(llama_engine):
    """The serve layer's streaming decodes like the backend's own generate (greedy)."""
    from mi_llm.llm.backends.base import GenerationConfig

    msgs = [{"role": "system", "content": "You are a counselor."}, {"role": "user", "content": "我最近总是熬夜。"}]
    cfg = GenerationConfig(max_new_tokens=16, do_sample=False)
    text, finish = llama_engine.complete(msgs, cfg)
    [expected] = llama_engine.backend.generate([msgs], cfg)
    assert text.strip() == expected.text and finish.completion_tokens == expected.completion_tokens


@pytest.fixture(scope="module")
def batched_engine():
    from mi_llm.llm.llamacpp_runtime import build_fingerprint
    from mi_llm.serve.engine import build_engine

    require_setup(build_fingerprint() is not None, "llama-cpp-python (make venv builds it)")
    engine = build_engine("llamacpp", None, n_ctx=1024, parallel=3)
    yield engine
    engine.close()


def test_concurrent_streams_are_batched_and_a_disconnect_frees_its_slot(batched_engine, tmp_path):
    """`mi-llm serve --parallel 3`: six clients at once each get their own reply, streamed,
    from one llama.cpp batch; a client that leaves stops its stream in the batch."""
    import threading
    import time

    import httpx

    store = SessionStore(tmp_path / "s.sqlite3")
    app = create_app(batched_engine, ServeConfig(temperature=0.0, rate_per_minute=0), store)
    texts = [f"I want to sleep earlier, attempt {i}." for i in range(6)]
    replies: dict[int, list[str]] = {}
    with BackgroundServer(app) as server:
        client = openai_client(server, key=None)

        def one(i: int) -> None:
            stream = client.chat.completions.create(
                model="m",
                stream=True,
                max_tokens=10,
                messages=[{"role": "user", "content": texts[i]}],
                extra_body={"session_id": f"b-{i}"},
            )
            replies[i] = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert sorted(replies) == list(range(6)) and all(len(p) >= 2 for p in replies.values())
        streamer = batched_engine.backend._streamer  # noqa: SLF001
        assert all(len(store.history(f"b-{i}")) == 2 for i in range(6))  # every exchange stored
        steps = streamer.steps
        body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True, "max_tokens": 400}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # leave after the first piece of text
        deadline = time.monotonic() + 60
        while streamer.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert streamer.running == 0
        assert streamer.steps - steps < 100  # it stopped far short of 400 tokens
    store.close()


def test_the_system_prompts_are_cached_before_the_first_client(batched_engine, tmp_path):
    """Creating the app puts each language's MI system prompt into a slot of the batch engine
    (one token generated each), so the first wave of clients shares it at once."""
    from mi_llm.llm.templates import shared_prefix_len
    from mi_llm.prompts import load_prompt
    from mi_llm.serve.api import WARM_USER
    from mi_llm.serve.protocol import conversation

    backend = batched_engine.backend
    if backend._streamer is not None:  # noqa: SLF001 - empty the slots other tests filled
        backend._streamer.engine.reset()  # noqa: SLF001
    store = SessionStore(tmp_path / "s.sqlite3")
    create_app(batched_engine, ServeConfig(temperature=0.0), store)
    cached = backend._streamer.engine.cached  # noqa: SLF001
    for lang in ("en", "zh"):
        system = load_prompt("system", lang)
        prompt = backend.encode(conversation(system, [], WARM_USER[lang]))
        other = backend.encode(conversation(system, [], "Something else entirely."))
        shared = shared_prefix_len(prompt, other)  # the system prompt and the template around it
        assert shared > 50 and max(shared_prefix_len(c, prompt) for c in cached) >= shared, [len(c) for c in cached]
    store.close()
