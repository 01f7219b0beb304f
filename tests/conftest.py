"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
