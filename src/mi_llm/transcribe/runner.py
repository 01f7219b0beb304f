"""The transcription run: read dialogues, rewrite each with an LLM, validate, write.

Every call goes through the cache first; every answer is cached as soon as it arrives;
every finished dialogue is appended to the output (or to the failure report) at once. A
rerun skips what the output and the failure report already hold, so a crash, kill or
Ctrl-C loses nothing and pays for nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue, Turn, read_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.layout import CACHE_SUFFIX, SUMMARY_SUFFIX, beside
from mi_llm.llm.backends import BACKENDS
from mi_llm.llm.openai_client import estimate_tokens
from mi_llm.transcribe.cache import CachedCall, CallCache, call_key
from mi_llm.transcribe.clients import ApiError, ChatClient, ChatResult, make_client
from mi_llm.transcribe.config import TranscribeConfig, TranscribeGenerationConfig
from mi_llm.transcribe.pricing import PriceTable, load_prices
from mi_llm.transcribe.prompt import (
    Messages,
    PreparedDialogue,
    load_rewrite_prompt,
    prepare,
    render_messages,
    repair_messages,
)
from mi_llm.transcribe.ratelimit import RateLimiter
from mi_llm.transcribe.store import RETRY_ON_RESUME, ResultStore
from mi_llm.transcribe.validate import validate_answer

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    inputs: int = 0  # input dialogues considered (after --limit)
    todo: int = 0  # of those, not yet in the output or the failure report
    already_done: int = 0
    already_failed: int = 0
    ok: int = 0
    failed: int = 0
    from_cache: int = 0  # finished dialogues that needed no paid call
    requests: int = 0  # HTTP requests / generate calls made (retries included)
    cache_hits: int = 0
    retries: int = 0  # requests repeated after 429 / 5xx / timeout
    repairs: int = 0  # re-asks after a rejected answer
    prompt_tokens: int = 0  # paid in this run
    completion_tokens: int = 0
    usage_estimated_calls: int = 0  # calls whose server sent no usage
    cost: float = 0.0  # USD in this run, for calls with a known price
    cost_unknown_calls: int = 0  # paid calls of a model with no price
    cached_prompt_tokens: int = 0  # served from the cache: not paid again
    cached_completion_tokens: int = 0
    saved_cost: float = 0.0
    rate_limit_wait_s: float = 0.0
    elapsed_s: float = 0.0
    failure_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def cost_display(self) -> str:
        s = f"${self.cost:.4f}"
        return s + " (+ unpriced calls)" if self.cost_unknown_calls else s


class FatalApiError(MiLlmError):
    pass


@dataclass
class _DialogueState:
    paid: int = 0
    cached: int = 0
    usage: Counter[str] = field(default_factory=Counter)


ProgressHook = Callable[[RunStats], None]


class Transcriber:
    def __init__(
        self,
        settings: TranscribeConfig,
        client: ChatClient,
        cache: CallCache,
        prices: PriceTable,
        store: ResultStore,
        on_progress: ProgressHook | None = None,
    ):
        self.s, self.client, self.cache, self.prices, self.store = settings, client, cache, prices, store
        self.stats = RunStats()
        self.limiter = RateLimiter(settings.rpm, settings.tpm)
        self.on_progress = on_progress or (lambda stats: None)
        self._kinds: Counter[str] = Counter()

    # ------------------------------------------------------------------ one call
    async def _call(self, messages: Messages, prompt_version: str, refresh: bool, st: _DialogueState) -> ChatResult:
        key = call_key(self.client.backend, self.client.model, prompt_version, messages, self.s.gen.key())
        if not refresh:
            hit = self.cache.get(key)
            if hit is not None:
                st.cached += 1
                self.stats.cache_hits += 1
                self.stats.cached_prompt_tokens += hit.prompt_tokens
                self.stats.cached_completion_tokens += hit.completion_tokens
                self.stats.saved_cost += hit.cost or 0.0
                return ChatResult(
                    hit.text,
                    hit.finish_reason,
                    hit.prompt_tokens,
                    hit.completion_tokens,
                    hit.usage_estimated,
                    attempts=0,
                )
        reserve = estimate_tokens(messages) + self.s.gen.max_tokens
        slot = await self.limiter.acquire(reserve)
        try:
            # The client retries 429, 5xx and timeouts itself (the openai SDK, --max-retries);
            # a server's Retry-After pauses every worker here, not only this one.
            res = await self.client.complete(messages, self.s.gen, on_retry_after=self.limiter.pause)
        except ApiError as e:
            self._count_requests(e.attempts)
            self.limiter.settle(slot, 0 if e.status == 429 else estimate_tokens(messages))
            if e.fatal:
                raise FatalApiError(f"{self.client.backend} {self.client.model}: {e}") from None
            raise
        self._count_requests(res.attempts)
        self.limiter.settle(slot, res.prompt_tokens + res.completion_tokens)
        cost = self.prices.cost(self.client.backend, self.client.model, res.prompt_tokens, res.completion_tokens)
        self.cache.put(
            key,
            self.client.backend,
            self.client.model,
            prompt_version,
            CachedCall(
                res.text, res.finish_reason, res.prompt_tokens, res.completion_tokens, res.usage_estimated, cost
            ),
        )
        st.paid += 1
        st.usage.update(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)
        self.stats.prompt_tokens += res.prompt_tokens
        self.stats.completion_tokens += res.completion_tokens
        self.stats.usage_estimated_calls += int(res.usage_estimated)
        if cost is None:
            self.stats.cost_unknown_calls += 1
        else:
            self.stats.cost += cost
        self.on_progress(self.stats)
        return res

    def _count_requests(self, attempts: int) -> None:
        self.stats.requests += attempts
        self.stats.retries += max(0, attempts - 1)
        if attempts > 1:
            log.warning("%s %s: a request took %d tries", self.client.backend, self.client.model, attempts)

    # ------------------------------------------------------------------ one dialogue
    async def rewrite(self, dialogue: Dialogue, refresh: bool = False) -> None:
        prepared = prepare(dialogue)
        st = _DialogueState()
        if prepared.n_client == 0:
            self._fail(dialogue, "input", "the dialogue has no client turn to keep", [], st)
            return
        prompt = load_rewrite_prompt(dialogue.language)
        messages = render_messages(prepared, prompt)
        errors: list[str] = []
        for attempt in range(self.s.max_repairs + 1):
            if attempt:
                self.stats.repairs += 1
            try:
                res = await self._call(messages, prompt.version_id, refresh, st)
            except ApiError as e:
                # "api": still failing after the retries (transient; the next run tries again);
                # "request": refused as such (e.g. HTTP 400, context too long) or the backend failed.
                kind = "api" if e.retryable else "request"
                self._fail(dialogue, kind, str(e), errors + [str(e)], st, prompt.version_id)
                return
            verdict = validate_answer(res.text, prepared, self.s.validation)
            if res.finish_reason == "length":
                verdict.errors.insert(
                    0,
                    f"the answer was cut off at the token limit ({self.s.gen.max_tokens}): keep counselor turns short",
                )
            if verdict.ok:
                self._write(dialogue, prepared, verdict.turns, prompt.version_id, attempt + 1, st)
                return
            errors.append(verdict.reason)
            log.debug("dialogue %s: answer %d rejected: %s", dialogue.id, attempt + 1, verdict.reason)
            messages = repair_messages(messages, res.text, verdict.reason, prepared.n_client, prompt)
        self._fail(dialogue, "validation", errors[-1], errors, st, prompt.version_id)

    def _meta(self, prompt_version: str | None, attempts: int, st: _DialogueState) -> dict[str, Any]:
        return {
            "prompt_version": prompt_version,
            "backend": self.client.backend,
            "model": self.client.model,
            "attempts": attempts,
            "paid_calls": st.paid,
            "cached_calls": st.cached,
            "usage": dict(st.usage),
        }

    def _write(
        self,
        d: Dialogue,
        prepared: PreparedDialogue,
        turns: list[tuple[str, str]],
        prompt_version: str,
        attempts: int,
        st: _DialogueState,
    ) -> None:
        meta = {
            **d.meta,
            "transcribe": {
                "source_id": d.id,
                "source_style": d.style,
                **self._meta(prompt_version, attempts, st),
                "generation": self.s.gen.key(),
                "input": {
                    "dropped_leading_counselor": prepared.dropped_leading_counselor,
                    "merged_turns": prepared.merged_turns,
                    "dropped_blank": prepared.dropped_blank,
                },
            },
        }
        out = Dialogue(
            id=d.id + self.s.id_suffix,
            source=d.source,
            language=d.language,
            topic=d.topic,
            style="mi",
            turns=[Turn(role=r, text=t) for r, t in turns],
            meta=meta,
        )
        self.store.append_ok(out)
        self.stats.ok += 1
        self._finished(st)

    def _fail(
        self,
        d: Dialogue,
        kind: str,
        reason: str,
        errors: list[str],
        st: _DialogueState,
        prompt_version: str | None = None,
    ) -> None:
        self.store.append_failure(
            {
                "id": d.id,
                "kind": kind,
                "reason": reason,
                "errors": errors,
                **self._meta(prompt_version, len(errors), st),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        self.stats.failed += 1
        self._kinds[kind] += 1
        self.stats.failure_kinds = dict(self._kinds)
        self._finished(st)

    def _finished(self, st: _DialogueState) -> None:
        if st.paid == 0 and st.cached > 0:
            self.stats.from_cache += 1
        self.on_progress(self.stats)

    # ------------------------------------------------------------------ the run
    def plan(self, dialogues: list[Dialogue]) -> list[tuple[Dialogue, bool]]:
        """(dialogue, bypass the cache) for each dialogue still to do, in input order."""
        todo: list[tuple[Dialogue, bool]] = []
        retry_ids: set[str] = set()
        for d in dialogues:
            if d.id + self.s.id_suffix in self.store.done:
                self.stats.already_done += 1
            elif d.id in self.store.failed:
                kind = self.store.failed[d.id].get("kind")
                if self.s.retry_failed or kind in RETRY_ON_RESUME:
                    retry_ids.add(d.id)
                    todo.append((d, self.s.retry_failed and kind not in RETRY_ON_RESUME))
                else:
                    self.stats.already_failed += 1
            else:
                todo.append((d, False))
        self.store.forget_failures(retry_ids)
        self.stats.inputs, self.stats.todo = len(dialogues), len(todo)
        return todo

    async def run(self, todo: list[tuple[Dialogue, bool]]) -> RunStats:
        t0 = time.monotonic()
        queue: asyncio.Queue[tuple[Dialogue, bool]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    d, refresh = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.rewrite(d, refresh)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(self.s.concurrency, len(todo))))]
        try:
            # The first fatal error (bad key, unknown model) stops every worker.
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in workers:
                t.cancel()
            self.stats.elapsed_s = time.monotonic() - t0
            self.stats.rate_limit_wait_s = self.limiter.waited_s
        return self.stats


def select_inputs(path: Path, limit: int | None) -> list[Dialogue]:
    dialogues = read_dialogues(path)
    return dialogues[:limit] if limit else dialogues


def default_cache_path(output: Path) -> Path:
    return beside(output, CACHE_SUFFIX)


def summary_path(output: Path) -> Path:
    return beside(output, SUMMARY_SUFFIX)


def transcribe_file(
    input_path: str | Path,
    output_path: str | Path,
    settings: TranscribeConfig,
    on_start: Callable[[RunStats], None] | None = None,
    on_progress: ProgressHook | None = None,
    client: ChatClient | None = None,
) -> RunStats:
    """Rewrite every dialogue of `input_path` into MI style, appending to `output_path`
    (and `<output>.failed.jsonl`); resumes a previous run. Writes `<output>.summary.json`."""
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise MiLlmError("the output must not be the input file")
    if settings.concurrency < 1 or settings.max_retries < 0 or settings.max_repairs < 0:
        raise MiLlmError("--concurrency must be >= 1, --max-retries and --max-repairs >= 0")
    dialogues = select_inputs(input_path, settings.limit)
    for d in dialogues:
        load_rewrite_prompt(d.language)  # fail early on a language with no prompt
    prices = load_prices(settings.prices_path)
    cache_path = settings.cache_path or default_cache_path(output_path)
    owned: ChatClient | None = None
    if client is None:
        BACKENDS.get(settings.backend)  # an unknown name: one line naming the choices
    if client is None and settings.backend == "openai":
        owned = _make_client(settings)  # cheap, and a missing key should fail before any file is touched
    store = ResultStore(output_path)
    store.open()
    cache: CallCache | None = None
    try:
        cache = CallCache(cache_path)
        t = Transcriber(
            settings, client or _NamedOnly(settings.backend, settings.model), cache, prices, store, on_progress
        )
        todo = t.plan(dialogues)
        if todo and client is None and owned is None:
            owned = _make_client(settings)  # a local model is loaded only when there is work
        if on_start:
            on_start(t.stats)
        if owned is not None:
            t.client = owned
            if settings.backend == "openai" and todo:
                log.info("dialogue text is sent to %s", owned.describe().get("base_url"))
        try:
            return asyncio.run(_run_and_close(t, todo, owned))
        finally:
            write_json(
                summary_path(output_path),
                {
                    "input": str(input_path),
                    "output": str(output_path),
                    "failures": str(store.failures),
                    "cache": str(cache_path),
                    "settings": settings.describe(),
                    "client": t.client.describe(),
                    "prompts": {
                        lang: load_rewrite_prompt(lang).version_id for lang in sorted({d.language for d in dialogues})
                    },
                    "stats": asdict(t.stats),
                    "output_dialogues": len(store.done),
                    "failure_report_dialogues": len(store.failed),
                },
            )
    finally:
        if cache is not None:
            cache.close()
        store.close()


def _make_client(s: TranscribeConfig) -> ChatClient:
    return make_client(
        s.backend,
        s.model,
        base_url=s.base_url,
        api_key_env=s.api_key_env,
        timeout_s=s.timeout_s,
        concurrency=s.concurrency,
        max_tokens_param=s.max_tokens_param,
        max_retries=s.max_retries,
        **s.backend_opts,
    )


async def _run_and_close(t: Transcriber, todo: list[tuple[Dialogue, bool]], owned: ChatClient | None) -> RunStats:
    try:
        return await t.run(todo)
    finally:
        if owned is not None:
            await owned.aclose()


class _NamedOnly:
    """Names the backend and model for planning, before (and unless) a real client is made."""

    def __init__(self, backend: str, model: str):
        self.backend, self.model = backend, model

    async def complete(
        self, messages: Messages, gen: TranscribeGenerationConfig, on_retry_after: Any = None
    ) -> ChatResult:
        raise RuntimeError("no client was made")

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}
