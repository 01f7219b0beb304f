"""llama.cpp backend (llama-cpp-python) on a GGUF.

The GGUF is, in order: `gguf=` given, the model itself when it is a `.gguf` file, the
embedded model's original GGUF, or the single `*.gguf` in the model folder (as written by
`mi-llm export`). A LoRA adapter is applied by llama.cpp on the (quantised) base: a LoRA
GGUF in the adapter folder is used, else the PEFT adapter is converted to one (cached beside
it). Prompts are rendered with the model's chat template; samples of one dialogue come in
order so llama.cpp reuses the KV cache of the shared prefix (system prompt and history).

`parallel > 1` decodes several conversations together in one llama.cpp batch (see
`mi_llm.llm.backends.llamacpp_batch`); `parallel = 1` is plain single-stream llama.cpp.
`stream_chat` sends the tokens as llama.cpp makes them. With `parallel > 1` up to that many
`stream_chat` calls may run at once, from different threads (`stream_concurrency`): their
streams are decoded together by continuous batching (`BatchStreamer`), each joining as a
slot frees.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mi_llm.errors import MiLlmError
from mi_llm.layout import AdapterPaths
from mi_llm.llm.backends.base import (
    BACKENDS,
    Backend,
    Completion,
    Finish,
    GenerationConfig,
    LeadingSpaceTrimmer,
    Messages,
    StopTrimmer,
    first_stop,
    fit_context,
)
from mi_llm.llm.llamacpp_runtime import import_llama_cpp

if TYPE_CHECKING:
    from mi_llm.llm.backends.llamacpp_batch import BatchStreamer

log = logging.getLogger(__name__)

# How long close() waits for generations still running before it frees llama.cpp's memory.
CLOSE_WAIT_S = 30.0

# GGUF architecture -> our template family, for a bare GGUF without a chat template.
_ARCH_FAMILY = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "glm4": "glm4",
    "chatglm": "glm4",
    "baichuan": "baichuan2",
}


def render_jinja(
    template: str, messages: Sequence[dict[str, str]], bos: str, eos: str, add_generation_prompt: bool = True
) -> str:
    """Render a chat template without transformers (sandboxed Jinja, as transformers does)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as e:
        raise MiLlmError(f"chat template failed: {e}") from None


def find_gguf(model: Any, gguf: str | Path | None) -> tuple[Path, Any]:
    """(GGUF path, ResolvedModel or None)."""
    from mi_llm.llm.resolve import ResolvedModel, resolve_model

    if gguf:
        g = Path(gguf)
        if not g.is_file():
            raise MiLlmError(f"{g}: no such GGUF file")
        rm = (
            model
            if isinstance(model, ResolvedModel)
            else (None if str(model).endswith(".gguf") else resolve_model(model))
        )
        return g, rm
    if not isinstance(model, ResolvedModel) and str(model).endswith(".gguf"):
        g = Path(model)
        if not g.is_file():
            raise MiLlmError(f"{g}: no such GGUF file")
        return g, None
    rm = model if isinstance(model, ResolvedModel) else resolve_model(model)
    if rm.gguf and Path(rm.gguf).is_file():
        return Path(rm.gguf), rm
    found = sorted(p for p in Path(rm.path).glob("*.gguf") if not p.name.startswith("."))
    if len(found) == 1:
        return found[0], rm
    if len(found) > 1:
        raise MiLlmError(f"{rm.path}: several GGUF files ({', '.join(p.name for p in found)}); choose one with --gguf")
    raise MiLlmError(f"{rm.name}: no GGUF for the llamacpp backend; export one (mi-llm export --gguf) or pass --gguf")


@BACKENDS.register("llamacpp")
class LlamaCppBackend(Backend):
    name = "llamacpp"
    preferred_order = "input"  # dialogue order: consecutive rounds share their prefix

    def __init__(
        self,
        model: Any,
        adapter: str | Path | None = None,
        gguf: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        parallel: int = 1,
        seed: int | None = 42,
        lora_scale: float = 1.0,
        **_: Any,
    ):
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp
        self.gguf, self.resolved = find_gguf(model, gguf)
        self.adapter = str(adapter) if adapter else None
        self.lora_gguf = self._lora_gguf(Path(adapter)) if adapter else None
        self.parallel = max(1, int(parallel))
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_ctx = n_ctx
        kwargs: dict[str, Any] = dict(
            # with parallel slots the engine has its own context; this one only needs to exist
            model_path=str(self.gguf),
            n_ctx=n_ctx if self.parallel == 1 else 256,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=n_batch,
            n_ubatch=min(n_batch, 512),
            verbose=False,
            seed=seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
        )
        if self.lora_gguf:
            kwargs.update(lora_path=str(self.lora_gguf), lora_scale=lora_scale)
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            with suppress_stdout_stderr(disable=False):  # llama.cpp's context warnings bypass verbose=False
                self.llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as e:
            raise MiLlmError(f"{self.gguf}: llama.cpp could not load it ({e})") from None
        self._setup_template()
        # Generations in flight: close() must not free the model under a thread still decoding
        # (a server's worker may outlive the request that started it): a crash, not an error.
        self._use = threading.Condition()
        self._active = 0
        self._closed = False
        self._engine = None
        self._streamer: BatchStreamer | None = None
        self._streamer_lock = threading.Lock()
        self.stream_concurrency = self.parallel
        if self.parallel > 1:
            from mi_llm.llm.backends.llamacpp_batch import BatchEngine

            self._engine = BatchEngine(self.llm, self.parallel, self.n_ctx, self.stop_ids, n_batch=n_batch)

    # ---------------------------------------------------------------- set-up

    def _lora_gguf(self, adapter: Path) -> Path:
        from mi_llm.llm.backends.hf import check_adapter
        from mi_llm.llm.lora_gguf import ARCHS, convert_lora, gguf_arch

        if adapter.is_file() and adapter.suffix == ".gguf":
            return adapter
        ready = sorted(adapter.glob("*.gguf")) if adapter.is_dir() else []
        if len(ready) == 1:
            return ready[0]
        if self.resolved is not None:
            check_adapter(adapter, self.resolved.path)
        own = self._own_config()
        arch = ARCHS.get(own.get("model_type", "")) or gguf_arch(self.gguf)
        if arch not in ARCHS.values():
            raise MiLlmError(
                f"{adapter}: llama.cpp cannot apply this adapter to a {arch} GGUF here; "
                "merge it and export a GGUF (mi-llm export --gguf)"
            )
        folder = AdapterPaths(adapter)
        out = folder.llamacpp_lora(arch)
        if out.is_file() and out.stat().st_mtime >= folder.weights.stat().st_mtime:
            return out
        n_layers = own.get("num_hidden_layers") or self._gguf_block_count(arch)
        return convert_lora(adapter, out, arch, int(n_layers))

    def _own_config(self) -> dict[str, Any]:
        """The HF config (its text part) of the model this GGUF was made from, when the GGUF is
        the resolved model's own: its architecture and depth without parsing the GGUF, which
        reads every tokenizer entry (about 9 s for the embedded model's 262k tokens here)."""
        rm = self.resolved
        if rm is None:
            return {}
        own = (rm.gguf is not None and Path(rm.gguf) == self.gguf) or self.gguf.parent == Path(rm.path)
        config = Path(rm.path) / "config.json"
        if not own or not config.is_file():
            return {}
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        text = cfg.get("text_config") or {}
        return {
            "model_type": cfg.get("model_type", ""),
            "num_hidden_layers": cfg.get("num_hidden_layers") or text.get("num_hidden_layers"),
        }

    def _gguf_block_count(self, arch: str) -> int:
        from mi_llm.llm.embedded import read_gguf

        reader = read_gguf(self.gguf)
        field = reader.fields.get(f"{arch}.block_count")
        if field is None:
            raise MiLlmError(f"{self.gguf}: no {arch}.block_count")
        return int(field.parts[field.data[0]][0])

    def _setup_template(self) -> None:
        from mi_llm.llm.templates import FAMILIES

        meta = self.llm.metadata or {}
        self.tokenizer = None
        if self.resolved is not None:
            from mi_llm.llm.load import load_tokenizer

            # The HF tokenizer of the same model: prompts are the exact ids the hf backend sees.
            self.tokenizer = load_tokenizer(self.resolved)
            self.template = self.resolved.chat_template
            stops = list(self.resolved.stop_tokens)
        else:
            arch = meta.get("general.architecture", "")
            fam = FAMILIES[_ARCH_FAMILY.get(arch, "default")]
            self.template = meta.get("tokenizer.chat_template") or fam.template
            stops = list(fam.stop_tokens())
        eos = self.llm.token_eos()
        self.bos_text = self._piece(self.llm.token_bos())
        self.eos_text = self._piece(eos)
        ids = {eos}
        for s in stops:
            t = self.llm.tokenize(s.encode(), add_bos=False, special=True)
            if len(t) == 1:
                ids.add(t[0])
        self.stop_ids = sorted(ids)

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.resolved.describe() if self.resolved is not None else {"name": str(self.gguf)},
            "gguf": str(self.gguf),
            "adapter": self.adapter,
            "lora_gguf": str(self.lora_gguf) if self.lora_gguf else None,
            "parallel": self.parallel,
            "n_threads": self.n_threads,
        }

    # ---------------------------------------------------------------- generation

    def encode(self, messages: Messages) -> list[int]:
        if self.tokenizer is not None:
            from mi_llm.llm.templates import encode_prompt

            return encode_prompt(self.tokenizer, messages)
        from mi_llm.llm.templates import split_prefill

        messages, prefill = split_prefill(messages)
        text = render_jinja(self.template, messages, self.bos_text, self.eos_text) + prefill
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._use:
            if self._closed:
                raise MiLlmError("the llama.cpp model is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._use:
                self._active -= 1
                self._use.notify_all()

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        with self._in_use():
            return self._generate(batch, config)

    def _generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        prompts = [self.encode(m) for m in batch]
        for p in prompts:
            if len(p) + config.max_new_tokens > self.n_ctx:
                raise MiLlmError(
                    f"prompt of {len(p)} tokens + {config.max_new_tokens} new tokens exceeds the "
                    f"context of {self.n_ctx} tokens (n_ctx)"
                )
        if self._engine is not None:
            if self._streamer is not None:  # the engine belongs to the live streams now: join them
                outs = self._through_streamer(self._streamer, prompts, config)
            else:
                outs = self._engine.generate(prompts, config)
            results = []
            for p, (ids, stopped) in zip(prompts, outs):
                text = self.llm.detokenize(ids).decode("utf-8", errors="replace")
                text, cut = first_stop(text, config.stop)
                results.append(Completion(text.strip(), len(p), len(ids), "stop" if stopped or cut else "length"))
            return results
        return [self._single(p, config) for p in prompts]

    @staticmethod
    def _through_streamer(
        streamer: BatchStreamer, prompts: list[list[int]], config: GenerationConfig
    ) -> list[tuple[list[int], bool]]:
        streams = streamer.submit_all(prompts, config)  # all queued before any is read
        outs = []
        for stream in streams:
            ids = list(streamer.read(stream))
            outs.append((ids, len(ids) < config.max_new_tokens))
        return outs

    def warm(self, conversations: Sequence[Messages]) -> None:
        """One token of each conversation, admitted together, so that each prompt stays in a
        slot of its own for the live streams to share (with parallel slots only)."""
        if self._engine is None or not conversations:
            return
        with self._in_use():
            self._through_streamer(
                self._batch_streamer(), [self.encode(c) for c in conversations], GenerationConfig(max_new_tokens=1)
            )

    def _batch_streamer(self) -> BatchStreamer:
        with self._streamer_lock:  # the first streams may start together
            if self._streamer is None:
                from mi_llm.llm.backends.llamacpp_batch import BatchStreamer

                assert self._engine is not None
                self._streamer = BatchStreamer(self._engine)
            return self._streamer

    def _tokens(self, prompt: list[int], config: GenerationConfig) -> Iterator[int]:
        """llama.cpp's tokens after `prompt` (reusing the cached common prefix), up to an end of turn."""
        if config.seed is not None:
            self.llm.set_seed(config.seed)
        gen = self.llm.generate(
            prompt,
            reset=True,
            temp=config.temperature if config.do_sample else 0.0,
            top_k=config.top_k if config.do_sample and config.top_k > 0 else 1 if not config.do_sample else 0,
            top_p=config.top_p if config.do_sample else 1.0,
            min_p=0.0,
            repeat_penalty=config.repetition_penalty,
        )
        for tok in gen:
            if tok in self.stop_ids or self._lib.llama_vocab_is_eog(self.llm._model.vocab, tok):  # noqa: SLF001
                return
            yield tok

    def _single(self, prompt: list[int], config: GenerationConfig) -> Completion:
        """Plain llama.cpp: one conversation at a time."""
        ids: list[int] = []
        stopped = True
        for tok in self._tokens(prompt, config):
            ids.append(tok)
            if len(ids) >= config.max_new_tokens:
                stopped = False
                break
        text = self.llm.detokenize(ids).decode("utf-8", errors="replace")
        text, cut = first_stop(text, config.stop)
        return Completion(text.strip(), len(prompt), len(ids), "stop" if stopped or cut else "length")

    def stream_chat(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        with self._in_use():
            yield from self._stream_chat(messages, config, cancel)

    def _stream_chat(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None
    ) -> Iterator[str | Finish]:
        _, prompt = fit_context(messages, self.encode, self.n_ctx, config.max_new_tokens)
        if self._engine is not None:
            tokens = self._batch_streamer().tokens(prompt, config, cancel)
        else:
            tokens = self._tokens(prompt, config)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        trim, lead = StopTrimmer(config.stop), LeadingSpaceTrimmer()
        ids: list[int] = []
        sent = 0  # bytes of the detokenized reply already decoded
        reason = "stop"
        for tok in tokens:
            if cancel is not None and cancel.is_set():
                break
            ids.append(tok)
            # Detokenize the whole reply so far: per-token pieces lose SentencePiece spacing.
            data = self.llm.detokenize(ids)
            text = lead.feed(trim.feed(decoder.decode(data[sent:])))
            sent = len(data)
            if text:
                yield text
            if trim.stopped:
                break
            if len(ids) >= config.max_new_tokens:
                reason = "length"
                break
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # ends the request in the batch engine (a stop string was met, or cancelled)
        if reason == "stop" and not trim.stopped and cancel is not None and cancel.is_set():
            reason = "cancelled"  # (the batch engine ends a cancelled stream without a token)
        tail = lead.feed(trim.feed(decoder.decode(b"", final=True)) + trim.flush())
        if tail:
            yield tail
        yield Finish(reason, len(prompt), len(ids))

    def close(self) -> None:
        use = getattr(self, "_use", None)
        if use is not None:
            with use:
                self._closed = True
                idle = use.wait_for(lambda: self._active == 0, timeout=CLOSE_WAIT_S)
                running = self._active
            if not idle:
                log.warning(
                    "llama.cpp: %d generation(s) still running at close; the model stays loaded until the process ends",
                    running,
                )
                return
        streamer = getattr(self, "_streamer", None)
        if streamer is not None:
            if not streamer.close():
                log.warning(
                    "llama.cpp: the decoding thread did not stop; the model stays loaded until the process ends"
                )
                return
            self._streamer = None
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()
            self._engine = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
