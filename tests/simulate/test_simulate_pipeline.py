"""The simulate stage of `mi-llm run`: base and fine-tuned counselor with the same personas and
seeds, skipped when up to date, resumed after a crash, started over when its inputs change.
Scripted backends stand in for the models (no model is loaded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from mi_llm.config import ExperimentConfig, load_config
from mi_llm.corpus.schema import read_dialogues
from mi_llm.errors import InputError
from mi_llm.layout import RunPaths
from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages
from mi_llm.stages import StageRunner
from tests.simulate.conftest import CONFRONTATIONAL, REFLECTIVE, KeywordTalkCoder, ScriptedClient, ScriptedCounselor


class Dual(Backend):
    """One loaded model playing both sides: the client's prompt names its action."""

    name = "scripted-dual"

    def __init__(self, lines: dict[str, list[str]]):
        self.counselor, self.client = ScriptedCounselor(lines), ScriptedClient()

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        is_client = ["How you answer" in m[0]["content"] for m in batch]
        if all(is_client):
            return self.client.generate(batch, config)
        assert not any(is_client)
        return self.counselor.generate(batch, config)


@pytest.fixture
def scripted(monkeypatch, miti_coder):
    """Sides load scripted backends: the fine-tuned counselor reflects, the base one confronts."""
    import mi_llm.miti.coders as coders
    import mi_llm.miti.coders.client_talk as client_talk
    from mi_llm.simulate import stage

    loads: list[tuple[str, str | None, dict, Backend]] = []

    def load(side):
        backend = ScriptedCounselor(REFLECTIVE) if side.adapter else Dual(CONFRONTATIONAL)
        loads.append((side.backend, side.adapter, dict(side.options), backend))
        return backend

    monkeypatch.setattr(stage.Side, "load", load)
    monkeypatch.setattr(coders, "load_coder", lambda name: miti_coder)
    monkeypatch.setattr(client_talk, "load_client_coder", lambda name: KeywordTalkCoder())
    return loads


def experiment(**simulate) -> ExperimentConfig:
    return ExperimentConfig(
        name="s",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        models=[{"name": "gemma-3-270m", "label": "m", "backend": "llamacpp", "backend_options": {"parallel": 4}}],
        simulate={
            "enabled": True,
            "client_backend": "llamacpp",
            "personas": "demo:en",
            "sessions": 3,
            "max_rounds": 5,
            **simulate,
        },
    )


def fake_adapter(paths: RunPaths, weights: bytes = b"w1") -> None:
    adapter = paths.adapter("m")
    adapter.root.mkdir(parents=True, exist_ok=True)
    adapter.peft_config.write_text("{}")
    adapter.weights.write_bytes(weights)


def run_stages(cfg: ExperimentConfig, paths: RunPaths, **kw) -> list[tuple[str, bool]]:
    from mi_llm.pipeline import simulate_stages

    runner = StageRunner(paths.root, **kw)
    return [(s.name, runner(s).skipped) for s in simulate_stages(cfg, paths, cfg.models[0])]


def test_base_and_finetuned_meet_the_same_clients(tmp_path, scripted):
    cfg = experiment()
    paths = RunPaths(tmp_path / "run")
    fake_adapter(paths)
    assert run_stages(cfg, paths) == [("m/simulate-base", False), ("m/simulate-finetuned", False)]
    base, tuned = (read_dialogues(paths.simulate("m", s).sessions) for s in ("base", "finetuned"))
    assert sorted((d.id, d.meta["seed"]) for d in base) == sorted((d.id, d.meta["seed"]) for d in tuned)
    for system in ("base", "finetuned"):
        sim = paths.simulate("m", system)
        assert sim.outcomes.is_file() and sim.coded.is_file() and sim.stage_marker.is_file()
    # the base model plays both sides (one load); the fine-tuned counselor is the model + adapter,
    # with the model's backend options; the client is the base model
    adapter = str(paths.adapter("m").root)
    assert [(b, a) for b, a, _, _ in scripted] == [("llamacpp", None), ("llamacpp", adapter), ("llamacpp", None)]
    assert scripted[1][2]["parallel"] == 3  # the model's 4, capped at the 3 sessions
    stage_rank = {"precontemplation": 0, "contemplation": 1, "preparation": 2}

    def moved(sessions):
        return sum(stage_rank[d.meta["final_stage"]] - stage_rank[d.meta["start_stage"]] for d in sessions)

    assert moved(tuned) > moved(base)  # the scripted reflective counselor beats the confrontational one
    from mi_llm.report.collect import simulations

    report = simulations(cfg, paths)  # what the report stage reads
    assert list(report) == ["m base", "m finetuned"]
    assert [len(s.coded) for s in report.values()] == [3, 3] and report["m base"].meta["sessions"] == 3
    assert run_stages(cfg, paths) == [("m/simulate-base", True), ("m/simulate-finetuned", True)]


def test_a_crash_resumes_the_sessions_a_new_adapter_starts_them_over(tmp_path, scripted):
    cfg = experiment()
    paths = RunPaths(tmp_path / "run")
    fake_adapter(paths)
    run_stages(cfg, paths)
    tuned = paths.simulate("m", "finetuned")
    whole = tuned.sessions.read_text()
    first_session = whole.splitlines(keepends=True)[0]

    def finetuned_first_batch() -> int:
        [counselor] = [b for _, adapter, _, b in scripted if adapter]
        return counselor.calls[0]

    # killed after one session: the stage recorded nothing; its marker says which inputs it ran on
    tuned.sessions.write_text(first_session)
    tuned.outcomes.unlink()
    scripted.clear()
    assert run_stages(cfg, paths)[1] == ("m/simulate-finetuned", False)
    assert finetuned_first_batch() == 2 and tuned.sessions.read_text() == whole  # resumed

    # retrained (other weights in the same folder): that session is not resumed
    tuned.sessions.write_text(first_session)
    fake_adapter(paths, b"w2")
    scripted.clear()
    assert run_stages(cfg, paths) == [("m/simulate-base", True), ("m/simulate-finetuned", False)]
    assert finetuned_first_batch() == 3 and tuned.sessions.read_text() == whole


def test_simulate_is_off_by_default_and_the_counselor_is_the_pipelines():
    cfg = ExperimentConfig(sources=[{"kind": "demo"}])
    assert not cfg.simulate.enabled and cfg.simulated_systems() == []
    steered = ExperimentConfig(
        sources=[{"kind": "demo"}], generation={"strategies": ["CR"]}, simulate={"enabled": True}
    )
    assert [s for _, _, s in steered.simulated_systems()] == ["base", "finetuned"]  # not the steered one
    with pytest.raises(ValueError, match="simulate.counselor is set by the pipeline"):
        ExperimentConfig(sources=[{"kind": "demo"}], simulate={"counselor": "x"})


def test_the_demo_simulates_a_little():
    demo = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert demo.simulate.enabled and demo.simulate.sessions * demo.simulate.max_rounds <= 4
    assert [s for _, _, s in demo.simulated_systems()] == ["base", "finetuned"]


def test_a_bad_simulate_setting_is_located(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - kind: demo\nsimulate:\n  enabled: true\n  max_rounds: 0\n")
    with pytest.raises(InputError, match=r"bad.yaml:5: simulate.max_rounds"):
        load_config(bad)
