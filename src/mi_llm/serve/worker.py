"""One model, many clients: requests wait in a queue and one worker thread generates.

Each request gets its own asyncio queue; the worker thread pushes the pieces of the reply
onto it as they come (`loop.call_soon_threadsafe`), so every client sees its own reply
stream while the model serves one request at a time. A client that goes away sets its
request's cancel flag: a waiting request is skipped, a running one stops at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.serve.engine import ChatEngine, Finish, Messages

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts (`--max-queue`)."""


@dataclass
class _Job:
    messages: Messages
    config: GenerationConfig
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)


_END = object()


class GenerationWorker:
    def __init__(self, engine: ChatEngine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max(1, int(max_queue))
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0  # queued + running
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mi-llm-generation", daemon=True)
        self._thread.start()
        self.served = 0

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, messages: Messages, config: GenerationConfig) -> _Job:
        """Queue a request (call from the event loop); `QueueFull` when the queue is full."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull()
            self._pending += 1
        job = _Job(messages, config, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        return job

    async def stream(self, messages: Messages, config: GenerationConfig) -> AsyncIterator[str | Finish]:
        """Queue a request and yield the pieces of its reply, then a `Finish`."""
        job = self.submit(messages, config)
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
                self.served += 1
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers with an error
                log.error("generation failed: %s: %s", type(e).__name__, e)
                self._emit(job, e)
            finally:
                self._emit(job, _END)
                with self._lock:
                    self._pending -= 1

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
