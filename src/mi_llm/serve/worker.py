"""One model, many clients: requests wait in a queue and worker threads generate.

The worker runs the engine's `concurrency` streams at once, one thread each (1 for a model
that streams one conversation at a time; the llama.cpp batch engine's slots, whose streams
are decoded together; an upstream server's connections). Waiting requests are admitted
round-robin over clients (`FairQueue`): a client with many requests waiting does not hold
back one with a single request. Each request gets its own asyncio queue; a worker thread
pushes the pieces of the reply onto it as they come (`loop.call_soon_threadsafe`), so every
client sees its own reply stream. A client that goes away sets its request's cancel flag: a
waiting request is skipped, a running one stops at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.serve.engine import ChatEngine, Finish, Messages, UpstreamError

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts (`--max-queue`)."""


@dataclass
class _Job:
    messages: Messages
    config: GenerationConfig
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    client: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)


_END = object()


class FairQueue:
    """Jobs taken round-robin over clients, each client's own in order (thread-safe).
    `get` blocks until there is a job; `None` (from `close`) ends a taker."""

    def __init__(self) -> None:
        self._by_client: OrderedDict[str, deque[_Job]] = OrderedDict()  # clients in turn order
        self._closed = 0  # takers still to end
        self._ready = threading.Condition()

    def put(self, job: _Job) -> None:
        with self._ready:
            self._by_client.setdefault(job.client, deque()).append(job)
            self._ready.notify()

    def get(self) -> _Job | None:
        with self._ready:
            while not self._by_client and not self._closed:
                self._ready.wait()
            if self._closed:
                self._closed -= 1
                return None
            client, jobs = next(iter(self._by_client.items()))
            job = jobs.popleft()
            del self._by_client[client]
            if jobs:  # the client's next job waits for every other client's turn
                self._by_client[client] = jobs
            return job

    def close(self, takers: int) -> None:
        with self._ready:
            self._closed += takers
            self._ready.notify_all()


class GenerationWorker:
    def __init__(self, engine: ChatEngine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max(1, int(max_queue))
        self._jobs = FairQueue()
        self._pending = 0  # queued + running
        self._lock = threading.Lock()
        self.concurrency = max(1, int(getattr(engine, "concurrency", 1)))
        self._threads = [
            threading.Thread(target=self._run, name=f"mi-llm-generation-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()
        self.served = 0

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, messages: Messages, config: GenerationConfig, client: str = "") -> _Job:
        """Queue a request (call from the event loop); `QueueFull` when the queue is full.
        `client` names who asked: waiting requests are taken round-robin over clients."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull()
            self._pending += 1
        job = _Job(messages, config, asyncio.get_running_loop(), asyncio.Queue(), client)
        self._jobs.put(job)
        return job

    async def stream(
        self, messages: Messages, config: GenerationConfig, client: str = ""
    ) -> AsyncIterator[str | Finish]:
        """Queue a request and yield the pieces of its reply, then a `Finish`."""
        job = self.submit(messages, config, client)
        async for item in self.results(job):
            yield item

    async def results(self, job: _Job) -> AsyncIterator[str | Finish]:
        """The pieces of a submitted request's reply, then a `Finish`."""
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancel.set()  # the client went away or the stream ended: nothing more to do

    def _emit(self, job: _Job, item: Any) -> None:
        try:
            job.loop.call_soon_threadsafe(job.out.put_nowait, item)
        except RuntimeError:  # the event loop is closed (server shutting down)
            job.cancel.set()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.cancel.is_set():
                    continue
                for item in self.engine.stream(job.messages, job.config, job.cancel):
                    self._emit(job, item)
                    if job.cancel.is_set() and not isinstance(item, Finish):
                        continue  # the engine sees the flag and ends with a Finish
                with self._lock:
                    self.served += 1
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers with an error
                # a model server's error message may quote the conversation: only its status is logged
                why = f"HTTP {e.status}" if isinstance(e, UpstreamError) else str(e)
                log.error("generation failed: %s: %s", type(e).__name__, why)
                self._emit(job, e)
            finally:
                self._emit(job, _END)
                with self._lock:
                    self._pending -= 1

    def close(self) -> None:
        self._jobs.close(len(self._threads))
        for t in self._threads:
            t.join(timeout=5)
