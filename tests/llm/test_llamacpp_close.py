"""LlamaCppBackend.close never frees llama.cpp's memory under a thread still generating
(a server's worker can outlive the request that started it: freeing then is a crash)."""

from __future__ import annotations

import threading

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.llm.backends import llamacpp
from mi_llm.llm.backends.llamacpp import LlamaCppBackend


class Native:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def backend_without_model() -> LlamaCppBackend:
    b = object.__new__(LlamaCppBackend)  # the guard only: no GGUF is loaded
    b._use = threading.Condition()
    b._active = 0
    b._closed = False
    b._streamer = None
    b._engine = Native()
    b.llm = Native()
    return b


def test_close_waits_for_a_running_generation_and_then_frees(monkeypatch):
    monkeypatch.setattr(llamacpp, "CLOSE_WAIT_S", 0.2)
    b = backend_without_model()
    llm, engine = b.llm, b._engine
    entered, release = threading.Event(), threading.Event()

    def generating() -> None:
        with b._in_use():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=generating)
    t.start()
    assert entered.wait(5)
    b.close()  # the generation is still running: nothing is freed
    assert not llm.closed and not engine.closed
    with pytest.raises(MiLlmError, match="closed"):
        with b._in_use():
            pass  # no new generation starts on a closing model
    release.set()
    t.join(5)
    b.close()
    assert llm.closed and engine.closed and b.llm is None


def test_close_frees_at_once_when_idle():
    b = backend_without_model()
    llm = b.llm
    b.close()
    assert llm.closed
