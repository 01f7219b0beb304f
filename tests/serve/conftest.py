"""Fixtures for the serve tests: the server on 127.0.0.1 with a scripted engine (no model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.serve.api import BackgroundServer, ServeConfig, create_app
from mi_llm.serve.engine import EchoEngine, Finish, Messages
from mi_llm.serve.sessions import SessionStore

KEY = "test-key-123456"


class RecordingEngine(EchoEngine):
    """Echo, and remember every conversation it was asked to continue and how each ended."""

    def __init__(self, delay: float = 0.0):
        super().__init__(model_id="echo-test", delay=delay)
        self.calls: list[Messages] = []
        self.finishes: list[str] = []

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        self.calls.append([dict(m) for m in messages])
        for item in super().stream(messages, config, cancel):
            if isinstance(item, Finish):
                self.finishes.append(item.reason)
            yield item


class BlockingEngine(EchoEngine):
    """Holds every generation until `release` is set (to fill the queue)."""

    def __init__(self) -> None:
        super().__init__(model_id="blocking")
        self.release = threading.Event()
        self.started = threading.Event()

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        self.started.set()
        self.release.wait(10)
        yield from super().stream(messages, config, cancel)


@pytest.fixture
def start_server(tmp_path: Path):
    """start_server(engine=None, db=None, safety=None, access_log=False, **settings) -> (BackgroundServer, engine, store);
    all stopped at the end."""
    running: list[tuple[BackgroundServer, SessionStore]] = []

    def start(engine=None, db: Path | None = None, safety=None, access_log: bool = False, **settings):
        engine = engine or RecordingEngine()
        store = SessionStore(db or tmp_path / "sessions.sqlite3")
        settings.setdefault("temperature", 0.0)
        app = create_app(engine, ServeConfig(**settings), store, safety)
        server = BackgroundServer(app, access_log=access_log, log_level="info" if access_log else "warning").start()
        running.append((server, store))
        return server, engine, store

    yield start
    for server, store in running:
        server.stop()
        store.close()


def openai_client(server: BackgroundServer, key: str | None = KEY):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=key or "none", max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def tiny_hf_engine(tmp_path_factory: pytest.TempPathFactory):
    """The hf backend on a tiny random Gemma-3 (no download), as a streaming engine."""
    from mi_llm.llm.tiny import make_tiny_model
    from mi_llm.serve.engine import build_engine

    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    engine = build_engine("hf", str(path))
    yield engine
    engine.close()
