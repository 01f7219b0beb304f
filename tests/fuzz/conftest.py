"""Fixtures of the fuzz tests: the CLI called in-process, many times, fast."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _commands_registered_once():
    """`mi_llm.cli.main` registers every sub-command on each call, so hundreds of in-process
    calls grow the command tree (and the time per call) without bound: register once here."""
    import mi_llm.cli as cli

    register = getattr(cli, "_register_all", None)
    if register is None:
        yield
        return
    register()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_register_all", lambda: None)
        yield
