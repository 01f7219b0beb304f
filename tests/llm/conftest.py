"""Fixtures: a tiny random Gemma-3 model folder (no download) and a small test set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mi_llm.io import write_jsonl


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mi_llm.llm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def hf_backend(tiny_model: Path):
    from mi_llm.llm.backends import get_backend

    return get_backend("hf", str(tiny_model), batch_size=4)


def make_samples(n_dialogues: int = 3, rounds: int = 3) -> list[dict]:
    out = []
    for d in range(n_dialogues):
        history: list[list[str]] = []
        for r in range(1, rounds + 1):
            query = f"client {d}-{r}: I want to quit smoking" + " really" * (d + r)
            response = f"counselor {d}-{r}: it sounds like you are ready"
            out.append(
                {
                    "sample_id": f"d{d}#{r}",
                    "dialogue_id": f"d{d}",
                    "round": r,
                    "language": "en",
                    "source": "test",
                    "system": "You are a counselor.",
                    "history": [list(h) for h in history],
                    "query": query,
                    "response": response,
                }
            )
            history.append([query, response])
    return out


@pytest.fixture()
def test_set(tmp_path: Path) -> Path:
    path = tmp_path / "samples.test.jsonl"
    write_jsonl(path, make_samples())
    return path
