"""The batched llama.cpp engine (`--parallel N`) against single-stream llama.cpp, at every step.

Conversations that share the system prompt and the history and then diverge are decoded
together, teacher-forced on fixed continuations, so every step's logits can be compared
with single-stream llama.cpp on the same tokens. A KV-cache bug (a prefix copied from the
wrong slot, a token fed to the wrong sequence) shows at any step, also from the second
token on, where comparing the first generated token cannot see it. (Inconsistent
positions or stale cells make llama_decode fail, which fails the test too.)
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import require_setup

pytestmark = pytest.mark.integration

SYSTEM = "You are a motivational interviewing counselor. Listen, reflect, ask open questions, respect autonomy."
HISTORY = {  # two dialogues: prompts share the system prompt, and within a dialogue the history too
    "a": [
        {"role": "user", "content": "I smoke a pack a day and my doctor is worried."},
        {"role": "assistant", "content": "You are concerned about what your doctor said."},
    ],
    "b": [
        {"role": "user", "content": "我想多运动，但是总是坚持不下来。"},
        {"role": "assistant", "content": "你希望运动能成为习惯。"},
    ],
}
# (dialogue, last client turn, reply fed to the engine), in queue order, with 3 slots: replies
# of different lengths, so slots finish at different steps and take queued prompts.
TURNS = [
    ("a", "My wife wants me to stop.", "Your wife's wish matters to you, and you are not sure you are ready yet."),
    ("b", "工作太忙，晚上很累。", "听起来你白天已经很辛苦了，晚上很难再有力气。"),
    ("a", "I tried patches once.", "You have tried before."),  # finishes first: its slot takes the next prompt
    ("a+", "What would you do in my place?", "Let us think about it together."),  # round t+1 of the first
    ("b", "也许周末可以试试。", "周末是一个开始。"),
    ("a", "Work is stressful and smoking helps me relax.", "Smoking gives you a break from the stress."),
]
# Single-stream llama.cpp itself moves by up to KL ~0.03 between feeding a text at once or in
# pieces (batch shapes change the rounding of the quantised matrix products), the engine by
# up to 0.04; the KV-cache bugs tried moved it by 0.26 to 18 at the steps they touch.
MAX_KL = 0.15


@pytest.fixture(scope="module")
def engines():
    require_setup(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python (make venv builds it)")
    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.llamacpp_runtime import import_llama_cpp
    from mi_llm.llm.resolve import resolve_model

    llama_cpp = import_llama_cpp()  # loads the CPU variant of a runtime-dispatch build
    from llama_cpp._utils import suppress_stdout_stderr

    batched = get_backend("llamacpp", resolve_model("gemma-3-270m"), n_ctx=512, parallel=3, n_threads=2)
    with suppress_stdout_stderr(disable=False):
        single = llama_cpp.Llama(model_path=str(batched.gguf), n_ctx=512, n_threads=2, verbose=False)
    yield batched, single
    single.close()
    batched.close()


def _cases(backend) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and forced continuations (each reply's tokens as they stand in the next
    round's prompt, without its end-of-turn marker)."""
    convs: list[list[dict[str, str]]] = []
    for dialogue, user, _ in TURNS:
        before = (
            convs[0] + [{"role": "assistant", "content": TURNS[0][2]}]
            if dialogue == "a+"
            else [{"role": "system", "content": SYSTEM}, *HISTORY[dialogue]]
        )
        convs.append([*before, {"role": "user", "content": user}])
    prompts, conts = [], []
    for conv, (_, _, reply) in zip(convs, TURNS):
        prompt = backend.encode(conv)
        nxt = backend.encode([*conv, {"role": "assistant", "content": reply}, {"role": "user", "content": "Yes."}])
        assert nxt[: len(prompt)] == prompt
        rest = nxt[len(prompt) :]
        prompts.append(prompt)
        conts.append(rest[: min(i for i, t in enumerate(rest) if t in backend.stop_ids)])
    # The scenario as designed: the third request finishes first, and the round t+1 prompt
    # that its slot takes next holds the first request's prompt and reply, which another
    # slot is still decoding: the prefix is copied across streams, decoded tokens included.
    assert len(conts[2]) + 3 < min(len(conts[0]), len(conts[1]))
    assert prompts[3][: len(prompts[0]) + len(conts[0])] == prompts[0] + conts[0]
    return prompts, conts


def _single_stream(llm, prompt: list[int], cont: list[int]):
    """Plain llama.cpp as it generates: the prompt, then one token per decode."""
    import llama_cpp
    import numpy as np

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)  # noqa: SLF001
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)

    llm.reset()
    llm.eval(prompt)
    rows = [last_logits()]
    for tok in cont:
        llm.eval([tok])
        rows.append(last_logits())
    return np.stack(rows)


def _kl(ref, got):
    """KL(ref || got) of the next-token distributions, per row."""
    import numpy as np

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lr, lg = log_softmax(ref), log_softmax(got.astype(np.float64))
    return (np.exp(lr) * (lr - lg)).sum(-1)


def _check_against_single_stream(batched, single) -> None:
    import numpy as np

    prompts, conts = _cases(batched)
    refs = [_single_stream(single, p, c) for p, c in zip(prompts, conts)]
    engine = batched._engine  # noqa: SLF001
    # First pass on the cache as it stands; the second, in the reverse order, starts from
    # what the first left in the slots (longer sequences whose tails must be dropped).
    order = list(range(len(prompts)))
    for rnd, idx in enumerate((order, order[::-1])):
        got = engine.teacher_forced_logits([prompts[i] for i in idx], [conts[i] for i in idx])
        for i, rows in zip(idx, got):
            assert rows.shape == refs[i].shape
            kl = _kl(refs[i], rows)
            bad = [(step, round(float(k), 3)) for step, k in enumerate(kl) if k > MAX_KL]
            assert not bad, f"pass {rnd + 1}, sequence {i}: (step, KL) over {MAX_KL}: {bad}"
            # where single-stream llama.cpp is clear-cut (top-2 margin > 1), the same token wins
            top2 = np.sort(refs[i], axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 1.0
            assert (rows.argmax(1) == refs[i].argmax(1))[clear].all(), f"pass {rnd + 1}, sequence {i}"


def test_batched_logits_match_single_stream_at_every_step(engines) -> None:
    batched, single = engines
    _check_against_single_stream(batched, single)


def _conversation(i: int) -> list[dict[str, str]]:
    dialogue = "a" if i % 2 == 0 else "b"
    return [{"role": "system", "content": SYSTEM}, *HISTORY[dialogue], {"role": "user", "content": TURNS[i][1]}]


def test_live_streams_are_decoded_together_and_free_their_slots(engines) -> None:
    """Continuous batching of `stream_chat` calls from several threads (what `mi-llm serve`
    does): more streams than slots all finish, decoded together (fewer decode steps than
    tokens); cancelled streams free their slots at once; and the KV cache they leave behind
    (prompts cut off mid-feed, replies cut off) still decodes like single-stream llama.cpp."""
    import threading

    from mi_llm.llm.backends.base import Finish, GenerationConfig

    batched, single = engines
    assert batched.stream_concurrency == 3
    results: dict[int, list] = {}

    def run(i: int, config: GenerationConfig, cancel: threading.Event | None = None) -> None:
        results[i] = list(batched.stream_chat(_conversation(i), config, cancel))

    lengths = [6, 9, 12, 7, 10]  # 5 streams on 3 slots, finishing at different steps
    threads = [
        threading.Thread(
            target=run, args=(i, GenerationConfig(max_new_tokens=n, do_sample=False, repetition_penalty=1.0))
        )
        for i, n in enumerate(lengths)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    tokens = 0
    for i, n in enumerate(lengths):
        finish = results[i][-1]
        assert isinstance(finish, Finish) and finish.reason in ("stop", "length"), results[i]
        assert 0 < finish.completion_tokens <= n and "".join(results[i][:-1]).strip()
        assert finish.reason == "stop" or finish.completion_tokens == n
        tokens += finish.completion_tokens
    streamer = batched._streamer  # noqa: SLF001
    assert streamer.steps < tokens  # tokens of several streams per llama_decode

    # Three long streams fill the slots; cancelled after their first piece, they leave at once
    # and a fourth stream gets a slot and finishes.
    long = GenerationConfig(max_new_tokens=300, do_sample=False, repetition_penalty=1.0)
    cancels = [threading.Event() for _ in range(3)]
    firsts = [threading.Event() for _ in range(3)]

    def run_long(k: int) -> None:
        out = []
        for item in batched.stream_chat(_conversation(k), long, cancels[k]):
            out.append(item)
            firsts[k].set()
        results[10 + k] = out

    threads = [threading.Thread(target=run_long, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for e in firsts:
        assert e.wait(120)
    steps = streamer.steps
    for c in cancels:
        c.set()
    for t in threads:
        t.join(60)
    for k in range(3):
        assert results[10 + k][-1].reason == "cancelled" and results[10 + k][-1].completion_tokens < 300
    short = list(batched.stream_chat(_conversation(4), GenerationConfig(max_new_tokens=4, do_sample=False)))
    assert short[-1].completion_tokens <= 4
    assert streamer.steps - steps < 60  # nowhere near the 300 tokens the cancelled ones asked for

    # offline generate joins the live streams' engine (it owns the batch context now)
    [c] = batched.generate([_conversation(1)], GenerationConfig(max_new_tokens=5, do_sample=False))
    assert c.text and c.completion_tokens <= 5
    _check_against_single_stream(batched, single)
