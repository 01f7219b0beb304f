"""Fixtures and helpers shared by the whole test suite."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_setup(ok: object, what: str) -> None:
    """A test that needs something the set-up provides (llama-cpp-python, Chromium, the GGUF
    converter, ...): skip with the reason locally, fail under CI=true, where the set-up
    must have provided it and a skip would hide that it did not. Absent data or hardware
    (../shared/data, a GPU) is not set-up: skip for those with pytest.skip as usual."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"set-up missing under CI=true: {what}", pytrace=False)
    pytest.skip(f"set-up missing: {what}")


def import_setup(module: str, what: str | None = None) -> ModuleType:
    """pytest.importorskip for a module the set-up installs (see require_setup)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        require_setup(False, f"{what or module} ({e})")
        raise  # not reached


def needs_setup(ok: object, what: str) -> pytest.MarkDecorator:
    """The decorator (or pytestmark) form of require_setup: checked when the test sets up."""
    return pytest.mark.requires_setup(bool(ok), what)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_setup(ok, what): require_setup(ok, what) before the test (needs_setup)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_setup"):
        require_setup(*mark.args, **mark.kwargs)


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $MI_LLM_SHARED_DATA."""
    env = os.environ.get("MI_LLM_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets (never part of the repository); skips when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (set MI_LLM_SHARED_DATA to point elsewhere)")
    return path
