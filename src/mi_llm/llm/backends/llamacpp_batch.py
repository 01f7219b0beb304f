"""Continuous batching on llama.cpp: several conversations decoded in one `llama_decode`.

Single-stream llama.cpp reads every weight once per generated token; decoding `slots`
sequences together reads them once per step for all of them, which on a CPU turns a
memory-bound loop into a compute-bound one. Each slot is a llama.cpp sequence id in one
unified KV cache:

- a new prompt reuses the longest cached prefix of any slot (`llama_memory_seq_cp`
  shares the cells; no recomputation): round t+1 of a dialogue starts with the whole
  prompt of round t, and every prompt starts with the same system prompt;
- prompts are fed in chunks beside the single tokens of the slots already generating
  (at most `n_batch` tokens per decode), and a finished slot takes the next prompt at once.

Greedy decoding takes the argmax; sampling follows transformers' order (repetition
penalty, temperature, top-k, top-p) with a generator seeded per request.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.llm.templates import shared_prefix_len

log = logging.getLogger(__name__)


@dataclass
class _Request:
    index: int
    prompt: list[int]
    pending: list[int]  # prompt tokens not yet in the KV cache
    pos: int  # position of the next token fed
    out: list[int] = field(default_factory=list)
    last: int | None = None  # sampled, not yet fed
    rng: Any = None  # sampling only: numpy Generator seeded by (seed, index)
    config: GenerationConfig | None = None  # a live stream's own settings (BatchStreamer)
    stream: _Stream | None = None
    admitted: int = 0  # order in which requests took their slots


class BatchEngine:
    def __init__(
        self, llm: Any, slots: int, n_ctx: int, stop_ids: Sequence[int], n_batch: int = 512, unified: bool = False
    ):
        import llama_cpp
        from llama_cpp import _internals as internals

        self.lib = llama_cpp
        self.slots = slots
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.stop_ids = set(stop_ids)
        self.vocab = llm._model.vocab  # noqa: SLF001 - llama-cpp-python exposes no public handle
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = slots
        params.n_threads = llm.n_threads
        params.n_threads_batch = llm.n_threads_batch
        # Separate KV streams: each sequence attends over its own cells only (in one unified
        # pool every token attends over the whole pool, masked, which costs more than the
        # shared prefixes save); a prefix is shared by copying a whole stream.
        self.unified = unified
        params.kv_unified = unified
        params.swa_full = True  # keep sliding-window layers' history, so prefixes stay reusable
        params.no_perf = True
        # llama.cpp prints a warning per context about the full-size SWA cache (asked for
        # above) past its log callback: silence it at the file-descriptor level.
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):
            self.ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)  # noqa: SLF001
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, scales):
                raise MiLlmError("llama.cpp could not apply the LoRA adapter to the batch context")
        self.mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.cached: list[list[int]] = [[] for _ in range(slots)]  # tokens held in each slot's KV
        self._admitted = 0  # requests placed in slots so far: prompts are read in that order

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        self.ctx.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---------------------------------------------------------------- slots

    def _start(self, slot: int, req: _Request) -> None:
        """Place a prompt in `slot`, reusing the longest cached prefix of any slot."""
        lib, p = self.lib, req.prompt
        best, best_len = slot, shared_prefix_len(self.cached[slot], p)
        for other in range(self.slots):
            if other != slot:
                n = shared_prefix_len(self.cached[other], p)
                if n > best_len:
                    best, best_len = other, n
        best_len = min(best_len, len(p) - 1)  # feed at least the last token: its logits are needed
        if best == slot:
            if not lib.llama_memory_seq_rm(self.mem, slot, best_len, -1):
                lib.llama_memory_seq_rm(self.mem, slot, -1, -1)
                best_len = 0
        else:
            lib.llama_memory_seq_rm(self.mem, slot, -1, -1)
            if best_len > 0 and self.unified:
                lib.llama_memory_seq_cp(self.mem, best, slot, 0, best_len)
            elif best_len > 0:  # across streams llama.cpp copies whole sequences only
                lib.llama_memory_seq_cp(self.mem, best, slot, -1, -1)
                if not lib.llama_memory_seq_rm(self.mem, slot, best_len, -1):
                    lib.llama_memory_seq_rm(self.mem, slot, -1, -1)
                    best_len = 0
        self.cached[slot] = list(p[:best_len])
        req.pending = list(p[best_len:])
        req.pos = best_len
        req.admitted = self._admitted
        self._admitted += 1

    def _should_wait(self, prompt: Sequence[int], active: dict[int, _Request]) -> bool:
        """Whether a slot still feeding its prompt will soon hold a longer prefix of `prompt`.

        Round t+1 of a dialogue contains round t's whole prompt: starting it while round t
        is still being fed would compute that shared prefix twice. Waiting costs a step.
        """
        feeding = [r for r in active.values() if r.pending]
        if not feeding:
            return False
        soon = max(shared_prefix_len(r.prompt, prompt) for r in feeding)
        now = max(shared_prefix_len(c, prompt) for c in self.cached)
        return soon > now + 32

    def reset(self) -> None:
        """Empty every slot (after a failed decode the cache may hold cells no request owns)."""
        self.lib.llama_memory_clear(self.mem, True)
        self.cached = [[] for _ in range(self.slots)]

    def is_end(self, token: int) -> bool:
        return token in self.stop_ids or bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    # ---------------------------------------------------------------- decoding

    def generate(self, prompts: Sequence[list[int]], config: GenerationConfig) -> list[tuple[list[int], bool]]:
        """(generated ids, stopped at an end-of-turn) per prompt, in the prompts' order."""
        import numpy as np

        results: list[tuple[list[int], bool] | None] = [None] * len(prompts)

        def choose(req: _Request, logits: Any) -> int | None:
            if config.do_sample and req.rng is None:
                req.rng = np.random.default_rng([config.seed or 0, req.index])
            tok = self._sample(logits, req, config)
            if self.is_end(tok):
                results[req.index] = (req.out, True)
                return None
            req.out.append(tok)
            if len(req.out) >= config.max_new_tokens:
                results[req.index] = (req.out, False)
                return None
            return tok

        self._run(prompts, choose)
        return [r for r in results if r is not None]

    def teacher_forced_logits(self, prompts: Sequence[list[int]], continuations: Sequence[Sequence[int]]) -> list[Any]:
        """Logits of each prompt followed by its given continuation, decoded exactly as
        `generate` decodes (same slots, prefix reuse and batching), but feeding the given
        tokens instead of sampled ones. Per prompt a float32 array of shape
        (len(continuation) + 1, n_vocab): row j is the distribution of the token after
        prompt + continuation[:j]. For tests that compare the engine with single-stream llama.cpp."""
        import numpy as np

        rows: list[list[Any]] = [[] for _ in prompts]

        def choose(req: _Request, logits: Any) -> int | None:
            rows[req.index].append(np.array(logits, dtype=np.float32))  # the buffer is reused by the next decode
            cont = continuations[req.index]
            if len(req.out) >= len(cont):
                return None
            req.out.append(int(cont[len(req.out)]))
            return req.out[-1]

        self._run(prompts, choose)
        return [np.stack(r) for r in rows]

    def _run(self, prompts: Sequence[list[int]], choose: Callable[[_Request, Any], int | None]) -> None:
        """Decode all prompts through the slots. `choose(request, logits)` is called with the
        logits after the prompt and after each fed token; it returns the next token to feed,
        or None when that request is finished (its slot then takes the next prompt)."""
        queue = deque(range(len(prompts)))
        active: dict[int, _Request] = {}
        while queue or active:
            for slot in range(self.slots):
                if slot not in active and queue:
                    if self._should_wait(prompts[queue[0]], active):
                        break
                    i = queue.popleft()
                    req = _Request(i, list(prompts[i]), [], 0)
                    self._start(slot, req)
                    active[slot] = req
            for slot in self.step(active, choose):
                del active[slot]

    def step(self, active: dict[int, _Request], choose: Callable[[_Request, Any], int | None]) -> list[int]:
        """One `llama_decode`: the last chosen token of each generating slot, then chunks of
        the prompts still being fed, up to `n_batch` tokens. Prompts are read in the order
        their requests took a slot (the first to come gets its first token first), and one
        prompt takes at most half the budget while others wait, so a long one (a resumed
        session's history) does not shut them out. Returns the slots whose request `choose`
        finished."""
        import numpy as np

        lib, batch = self.lib, self.batch
        n = 0
        outputs: list[tuple[int, int]] = []  # (batch index, slot) whose logits we read
        for slot, req in active.items():
            if req.last is not None:
                self._put(batch, n, req.last, req.pos, slot, True)
                self.cached[slot].append(req.last)
                req.pos += 1
                outputs.append((n, slot))
                n += 1
        feeding = sorted((r.admitted, s) for s, r in active.items() if r.last is None and r.pending)
        # one prompt takes at most half a step's budget while others wait to be read
        share = self.n_batch if len(feeding) == 1 else max(1, self.n_batch // 2)
        for _, slot in feeding:
            if n >= self.n_batch:
                break
            req = active[slot]
            take = req.pending[: min(share, self.n_batch - n)]
            del req.pending[: len(take)]
            for k, tok in enumerate(take):
                last = not req.pending and k == len(take) - 1
                self._put(batch, n, tok, req.pos, slot, last)
                if last:
                    outputs.append((n, slot))
                req.pos += 1
                n += 1
            self.cached[slot].extend(take)
        if n == 0:
            return []
        batch.n_tokens = n
        rc = lib.llama_decode(self.ctx.ctx, batch)
        if rc != 0:
            raise MiLlmError(f"llama_decode failed ({rc}): the KV cache is full; lower --parallel or raise n_ctx")
        finished = []
        for idx, slot in outputs:
            req = active[slot]
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx.ctx, idx), shape=(self.n_vocab,))
            chosen = choose(req, logits)
            if chosen is None:
                finished.append(slot)
            else:
                req.last = chosen
        return finished

    @staticmethod
    def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    @staticmethod
    def _sample(logits: Any, req: _Request, config: GenerationConfig) -> int:
        import numpy as np

        if config.repetition_penalty == 1.0 and not config.do_sample:
            return int(logits.argmax())
        x = logits.astype(np.float64)
        if config.repetition_penalty != 1.0:
            seen = np.unique(np.asarray(req.prompt + req.out, dtype=np.int64))
            v = x[seen]
            x[seen] = np.where(v > 0, v / config.repetition_penalty, v * config.repetition_penalty)
        if not config.do_sample:
            return int(x.argmax())
        x = x / config.temperature
        if config.top_k > 0 and config.top_k < x.size:
            kth = np.partition(x, -config.top_k)[-config.top_k]
            x[x < kth] = -np.inf
        order = np.argsort(-x)
        probs = np.exp(x[order] - x[order[0]])
        probs /= probs.sum()
        if config.top_p < 1.0:
            keep = np.cumsum(probs) - probs < config.top_p  # always keeps the first
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum()
        return int(order[req.rng.choice(probs.size, p=probs)])


# ---------------------------------------------------------------- live streams


class _Stream:
    """One live request: its token ids go onto `out` as they are chosen, then `_END` (or the
    exception that ended it). `stop` is set by the reader when it wants no more tokens."""

    def __init__(self, prompt: list[int], config: GenerationConfig, cancel: threading.Event | None):
        self.prompt = prompt
        self.config = config
        self.cancel = cancel
        self.stop = threading.Event()
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def cancelled(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())


_END = object()


class BatchStreamer:
    """Continuous batching of live streams on one `BatchEngine`, in a thread of its own.

    Requests join free slots as they arrive (first come, first served; the caller decides
    the order in which it submits) while the other slots keep generating, every step
    decodes one token of each generating stream together, and a stream that ends, reaches
    its `max_new_tokens` or is cancelled frees its slot for the next request at once.
    Prompts that share a prefix (the system prompt, a dialogue's history) reuse each
    other's KV cells (`BatchEngine._start`).
    """

    def __init__(self, engine: BatchEngine):
        self.engine = engine
        self._waiting: deque[_Stream] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.steps = 0  # llama_decode calls so far (for tests and reports)
        self.running = 0  # requests in the slots
        self._thread = threading.Thread(target=self._loop, name="mi-llm-llamacpp-batch", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], config: GenerationConfig, cancel: threading.Event | None = None) -> _Stream:
        return self.submit_all([prompt], config, cancel)[0]

    def submit_all(
        self, prompts: Sequence[list[int]], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> list[_Stream]:
        """Queue the prompts together: the decoding thread admits them in one go, each into a
        free slot of its own (submitted one by one, a short one could finish first and the
        next take over its slot and cache)."""
        streams = [_Stream(list(p), config, cancel) for p in prompts]
        with self._wake:
            if self._closed:
                raise MiLlmError("the llama.cpp batch engine is closed")
            self._waiting.extend(streams)
            self._wake.notify()
        return streams

    def tokens(
        self, prompt: list[int], config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[int]:
        """The generated token ids of `prompt`, end-of-turn excluded, at most `max_new_tokens`;
        the iterator ends early when `cancel` is set. Closing it ends the request."""
        yield from self.read(self.submit(prompt, config, cancel))

    def read(self, stream: _Stream) -> Iterator[int]:
        try:
            while True:
                try:
                    item = stream.out.get(timeout=0.5)
                except queue.Empty:  # the engine checks `cancel` at each step; this is a backstop
                    if not self._thread.is_alive():
                        raise MiLlmError("the llama.cpp batch engine stopped") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.stop.set()
            self._poke()

    def _poke(self) -> None:
        with self._wake:
            self._wake.notify()

    def close(self) -> bool:
        """Stop the decoding thread; False if it is still running (its engine must not be freed)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------- the decoding thread

    def _choose(self, req: _Request, logits: Any) -> int | None:
        import numpy as np

        stream, config = req.stream, req.config
        assert stream is not None and config is not None
        if stream.cancelled():
            return None
        if config.do_sample and req.rng is None:
            req.rng = np.random.default_rng(config.seed)  # None: fresh entropy
        tok = self.engine._sample(logits, req, config)  # noqa: SLF001 - same module
        if self.engine.is_end(tok):
            return None
        req.out.append(tok)
        stream.out.put(tok)
        return None if len(req.out) >= config.max_new_tokens else tok

    def _admit(self, active: dict[int, _Request]) -> bool:
        """Move waiting requests into free slots; False once closed. Waits while there is nothing to do."""
        with self._wake:
            while True:
                for stream in [s for s in self._waiting if s.cancelled()]:
                    self._waiting.remove(stream)
                    stream.out.put(_END)
                if self._closed or active or self._waiting:
                    break
                self._wake.wait()
            if self._closed:
                for ending in [*self._waiting, *(r.stream for r in active.values())]:
                    if ending is not None:
                        ending.out.put(MiLlmError("the server is shutting down"))
                self._waiting.clear()
                active.clear()
                return False
            for slot in range(self.engine.slots):
                if not self._waiting:
                    break
                if slot in active:
                    continue
                if self.engine._should_wait(self._waiting[0].prompt, active):  # noqa: SLF001
                    break
                stream = self._waiting.popleft()
                req = _Request(slot, stream.prompt, [], 0, config=stream.config, stream=stream)
                self.engine._start(slot, req)  # noqa: SLF001
                active[slot] = req
        return True

    def _loop(self) -> None:
        active: dict[int, _Request] = {}
        while self._admit(active):
            for slot in [s for s, r in active.items() if r.stream is not None and r.stream.cancelled()]:
                active.pop(slot).stream.out.put(_END)  # type: ignore[union-attr]
            self.running = len(active)
            if not active:
                continue
            try:
                done = self.engine.step(active, self._choose)
                self.steps += 1
            except Exception as e:  # noqa: BLE001 - every request in the batch gets the error
                log.error("batched decoding failed: %s", e)
                for req in active.values():
                    req.stream.out.put(e if isinstance(e, MiLlmError) else MiLlmError(f"llama.cpp: {e}"))  # type: ignore[union-attr]
                active.clear()
                self.engine.reset()
                continue
            for slot in done:
                active.pop(slot).stream.out.put(_END)  # type: ignore[union-attr]
            self.running = len(active)
