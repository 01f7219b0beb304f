from __future__ import annotations

from pathlib import Path

import pytest

from mi_llm.corpus.schema import Dialogue, write_dialogues
from tests.transcribe.server import ScriptedServer


def make_dialogue(did: str, language: str = "en", rounds: int = 3, first: str | None = None) -> Dialogue:
    """A small raw dialogue; `first` (the first client text) names its server script."""
    if language == "en":
        clients = [
            first or f"I keep meaning to walk more ({did}).",
            "Work is busy and I am tired at night.",
            "Maybe on weekends I could try.",
        ]
        counselor = ["You need to exercise every day.", "Being tired is no excuse.", "Just do it."]
    else:
        clients = [first or f"我一直想多走走路（{did}）。", "工作太忙，晚上很累。", "也许周末可以试试。"]
        counselor = ["你必须每天锻炼。", "累不是理由。", "去做就行了。"]
    turns = []
    for i in range(rounds):
        turns += [
            {"role": "client", "text": clients[i % 3] if i else clients[0]},
            {"role": "counselor", "text": counselor[i % 3]},
        ]
    return Dialogue.model_validate(
        {"id": did, "source": "test", "language": language, "topic": "physical activity", "turns": turns}
    )


def first_client(d: Dialogue) -> str:
    return next(t.text for t in d.turns if t.role == "client")


@pytest.fixture
def server():
    srv = ScriptedServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def write_inputs(tmp_path: Path):
    def _write(dialogues: list[Dialogue], name: str = "in.jsonl") -> Path:
        path = tmp_path / name
        write_dialogues(path, dialogues)
        return path

    return _write
