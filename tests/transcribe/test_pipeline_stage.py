"""`mi-llm run` with transcription on: only the dialogues the split uses are sent to the API."""

from __future__ import annotations

from mi_llm.build.samples import read_samples
from mi_llm.config import ExperimentConfig
from mi_llm.corpus.schema import read_dialogues
from mi_llm.layout import RunPaths
from mi_llm.pipeline import data_stages
from tests.transcribe.conftest import make_dialogue


def test_run_rewrites_a_seeded_sample_sized_by_the_split(server, write_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    src = write_inputs([make_dialogue(f"e{i}") for i in range(8)])
    cfg = ExperimentConfig(
        sources=[{"kind": "dialogues", "path": str(src)}],
        transcribe={"enabled": True, "base_url": server.base_url, "concurrency": 2},
        split={"train": 3, "test": 1, "seed": 1},
    )
    paths = RunPaths(tmp_path / "run")
    for stage in data_stages(cfg, paths):
        stage.run()
    picked = [d.id for d in read_dialogues(paths.to_transcribe)]
    assert len(picked) == 5  # (3 + 1) x 1.05, rounded up
    assert len(server.calls) == 5 and {d.id for d in read_dialogues(paths.mi_dialogues)} == set(picked)
    built = {s.dialogue_id for part in ("train", "test") for s in read_samples(paths.build.samples(part))}
    assert len(built) == 4 and built <= set(picked)
