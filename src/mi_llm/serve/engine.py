"""Streaming chat engines for `mi-llm chat` and `mi-llm serve`.

An engine turns chat messages into a stream of text pieces followed by one `Finish`.
`BackendEngine` wraps a generation backend of `mi_llm.llm.backends` (one loaded model):

- a backend with its own `stream(messages, config)` is used as it is;
- `llamacpp`: tokens come one by one from llama.cpp (`Llama.generate`) on the backend's
  prompt ids (its chat template, its stop tokens, its LoRA);
- `hf`: transformers' `TextIteratorStreamer` on the backend's model and tokenizer;
- any other backend (`openai`, `vllm`): one `generate` call, sent as a single piece.

`EchoEngine` needs no model: it repeats the last user message back, word by word. It is
for trying the server, the web page and clients, and for tests.

Engines are not thread-safe: the server runs one engine in one worker thread.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import GenerationConfig

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
ENGINES = ("llamacpp", "hf", "openai", "vllm", "echo")


@dataclass
class Finish:
    """The end of a stream: why it ended and how many tokens it took."""

    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


class StopTrimmer:
    """Holds back text that could be the start of a stop string, so no piece of a stop
    string ever reaches the client; `feed` returns what is safe to send."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = 0
        for s in self.stops:  # the longest tail of pending that begins a stop string
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class LeadingSpaceTrimmer:
    """Drops whitespace before the first visible character (replies are stripped)."""

    def __init__(self) -> None:
        self.started = False

    def feed(self, text: str) -> str:
        if self.started:
            return text
        text = text.lstrip()
        self.started = bool(text)
        return text


class ChatEngine:
    """One loaded model that streams the next assistant turn."""

    name = "base"
    model_id = "model"

    def stream(self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None) -> Iterator[str | Finish]:
        """Text pieces of the reply, then one `Finish`."""
        raise NotImplementedError

    def complete(self, messages: Messages, config: GenerationConfig) -> tuple[str, Finish]:
        parts: list[str] = []
        finish = Finish("stop", 0, 0)
        for item in self.stream(messages, config):
            if isinstance(item, Finish):
                finish = item
            else:
                parts.append(item)
        return "".join(parts), finish

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_id}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class EchoEngine(ChatEngine):
    """Repeats the last user message ("You said: ..."), one word per piece."""

    name = "echo"

    def __init__(self, model_id: str = "echo", delay: float = 0.0, prefix: str = "You said: "):
        self.model_id = model_id
        self.delay = delay
        self.prefix = prefix

    def stream(self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None) -> Iterator[str | Finish]:
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        words = (self.prefix + last).split(" ")
        prompt_tokens = sum(len(m.get("content", "").split()) for m in messages)
        n = 0
        for i, w in enumerate(words):
            if cancel is not None and cancel.is_set():
                yield Finish("cancelled", prompt_tokens, n)
                return
            if n >= config.max_new_tokens:
                yield Finish("length", prompt_tokens, n)
                return
            if self.delay:
                time.sleep(self.delay)
            n += 1
            yield w if i == 0 else " " + w
        yield Finish("stop", prompt_tokens, n)


class BackendEngine(ChatEngine):
    """A `mi_llm.llm.backends` backend, streamed (see the module docstring)."""

    def __init__(self, backend: Any, model_id: str):
        self.backend = backend
        self.name = getattr(backend, "name", "backend")
        self.model_id = model_id

    def describe(self) -> dict[str, Any]:
        info = dict(self.backend.describe()) if hasattr(self.backend, "describe") else {}
        return {"engine": self.name, "model": self.model_id, **info}

    def close(self) -> None:
        self.backend.close()

    def stream(self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None) -> Iterator[str | Finish]:
        cancel = cancel or threading.Event()
        if callable(getattr(self.backend, "stream", None)):
            yield from self._own_stream(messages, config, cancel)
        elif self.name == "llamacpp" and hasattr(self.backend, "llm"):
            yield from self._llamacpp(messages, config, cancel)
        elif self.name == "hf" and hasattr(self.backend, "model"):
            yield from self._hf(messages, config, cancel)
        else:
            yield from self._whole(messages, config)

    # ---------------------------------------------------------------- strategies

    def _own_stream(self, messages: Messages, config: GenerationConfig, cancel: threading.Event) -> Iterator[str | Finish]:
        n = 0
        for piece in self.backend.stream(messages, config):
            if cancel.is_set():
                yield Finish("cancelled", 0, n)
                return
            if isinstance(piece, Finish):
                yield piece
                return
            n += 1
            yield str(piece)
        yield Finish("stop", 0, n)

    def _whole(self, messages: Messages, config: GenerationConfig) -> Iterator[str | Finish]:
        [c] = self.backend.generate([messages], config)
        if c.text:
            yield c.text
        yield Finish(c.finish_reason or "stop", c.prompt_tokens, c.completion_tokens)

    def _fit(self, messages: Messages, encode: Any, limit: int, max_new: int) -> tuple[Messages, list[int]]:
        """Drop the oldest exchanges until the prompt and the reply fit the context."""
        msgs = list(messages)
        ids = encode(msgs)
        while len(ids) + max_new > limit:
            first = 1 if msgs and msgs[0]["role"] == "system" else 0
            if len(msgs) - first <= 1:
                raise MiLlmError(f"the message is too long: {len(ids)} prompt tokens + {max_new} new tokens exceed the "
                                 f"model's context of {limit} tokens")
            del msgs[first : first + 2]  # one user turn and the reply to it
            ids = encode(msgs)
        return msgs, ids

    def _llamacpp(self, messages: Messages, config: GenerationConfig, cancel: threading.Event) -> Iterator[str | Finish]:
        b = self.backend
        _, prompt = self._fit(messages, b.encode, int(getattr(b, "n_ctx", 4096)), config.max_new_tokens)
        if config.seed is not None:
            b.llm.set_seed(config.seed)
        gen = b.llm.generate(
            prompt, reset=True,
            temp=config.temperature if config.do_sample else 0.0,
            top_k=(config.top_k if config.top_k > 0 else 0) if config.do_sample else 1,
            top_p=config.top_p if config.do_sample else 1.0, min_p=0.0,
            repeat_penalty=config.repetition_penalty,
        )
        stops = set(getattr(b, "stop_ids", []))
        is_eog = getattr(getattr(b.llm, "_model", None), "token_is_eog", None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        trim, lead = StopTrimmer(config.stop), LeadingSpaceTrimmer()
        ids: list[int] = []
        sent = 0  # bytes of the detokenized reply already decoded
        reason = "length"
        for tok in gen:
            if cancel.is_set():
                reason = "cancelled"
                break
            if tok in stops or (is_eog is not None and is_eog(tok)):
                reason = "stop"
                break
            ids.append(tok)
            # Detokenize the whole reply so far: per-token pieces lose SentencePiece spacing.
            data = b.llm.detokenize(ids)
            text = lead.feed(trim.feed(decoder.decode(data[sent:])))
            sent = len(data)
            if text:
                yield text
            if trim.stopped:
                reason = "stop"
                break
            if len(ids) >= config.max_new_tokens:
                break
        tail = lead.feed(trim.feed(decoder.decode(b"", final=True)) + trim.flush())
        if tail:
            yield tail
        yield Finish(reason, len(prompt), len(ids))

    def _hf(self, messages: Messages, config: GenerationConfig, cancel: threading.Event) -> Iterator[str | Finish]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from mi_llm.llm.templates import encode_prompt

        b = self.backend
        limit = int(getattr(b.model.config, "max_position_embeddings", 0) or 1 << 30)
        _, prompt = self._fit(messages, lambda m: encode_prompt(b.tokenizer, m), limit, config.max_new_tokens)

        class Counting(TextIteratorStreamer):
            n = 0

            def put(self, value: Any) -> None:
                if self.next_tokens_are_prompt is False:
                    self.n += int(value.numel())
                super().put(value)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = Counting(b.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        ids = torch.tensor([prompt], device=b.device)
        kwargs: dict[str, Any] = dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens,
            eos_token_id=list(b.stop_ids), pad_token_id=b.tokenizer.pad_token_id, streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancelled()]), do_sample=config.do_sample,
            repetition_penalty=config.repetition_penalty,
        )
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None)
            if config.seed is not None:
                torch.manual_seed(config.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        error: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    b.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="mi-llm-hf-generate", daemon=True)
        thread.start()
        trim, lead = StopTrimmer(config.stop), LeadingSpaceTrimmer()
        for piece in streamer:
            text = lead.feed(trim.feed(piece))
            if text:
                yield text
            if trim.stopped:
                cancel.set()  # a stop string: end generation early
        thread.join()
        if error:
            raise error[0]
        tail = lead.feed(trim.flush())
        if tail:
            yield tail
        n = streamer.n
        reason = "cancelled" if cancel.is_set() and not trim.stopped else "stop" if trim.stopped or n < config.max_new_tokens else "length"
        yield Finish(reason, len(prompt), n)


def llama_cpp_available() -> bool:
    """llama-cpp-python is installed and its build passed the crash probe on this CPU."""
    from mi_llm.llm.backends import resolve_auto_backend

    return resolve_auto_backend() == "llamacpp"


def build_engine(backend: str | None, model: str | None = None, adapter: str | None = None, **opts: Any) -> ChatEngine:
    """Load an engine. `backend=None` picks llamacpp when llama-cpp-python is installed, else hf."""
    if backend == "echo":
        return EchoEngine(model_id=model or "echo", delay=float(opts.get("echo_delay", 0.0)))
    if backend is None:
        from mi_llm.llm.backends import resolve_auto_backend

        backend = resolve_auto_backend()  # warns in one line when it falls back to hf
    from mi_llm.llm.backends import get_backend
    from mi_llm.llm.resolve import DEFAULT_MODEL

    opts.pop("echo_delay", None)
    name = model or DEFAULT_MODEL
    if backend not in ENGINES:
        raise MiLlmError(f"unknown backend {backend!r}; choose one of: {', '.join(ENGINES)}")
    b = get_backend(backend, name, adapter=adapter, **{k: v for k, v in opts.items() if v is not None})
    # The id clients see: the model name, and the adapter's folder name (not its full path).
    model_id = str(name) + (f"+{Path(adapter).name}" if adapter else "")
    return BackendEngine(b, model_id=model_id)
