"""The prefs and dpo stages of an experiment config: validation and wiring."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mi_llm.config import ExperimentConfig
from mi_llm.layout import RunPaths
from mi_llm.pipeline import model_stages


def steer(**over):
    body = {
        "sources": [{"kind": "demo"}],
        "prefs": {"enabled": True, "k": 4, "coder": "coders/other"},
        "dpo": {"enabled": True, "max_steps": 4, "beta": 0.2},
    }
    body.update(over)
    return ExperimentConfig.model_validate(body)


def test_the_dpo_system_and_its_stages(tmp_path):
    cfg = steer()
    assert [s for _, _, s in cfg.systems()] == ["base", "finetuned", "dpo"]
    paths = RunPaths(tmp_path)
    m = cfg.models[0]
    names = [s.name for s in model_stages(cfg, paths, m)]
    key = m.key
    order = [f"{key}/train", f"{key}/predict-finetuned", f"{key}/prefs", f"{key}/dpo", f"{key}/predict-dpo"]
    assert [n for n in names if n in order] == order
    assert f"{key}/evaluate-dpo" in names
    opts = cfg.dpo.train_config(m.name, str(paths.prefs(key)), str(paths.adapter(key).root), "o")
    assert opts.method == "dpo" and opts.adapter == str(paths.adapter(key).root) and opts.beta == 0.2
    assert cfg.prefs.prefs_config(m.name, "a", "hf").k == 4


@pytest.mark.parametrize(
    ("over", "what"),
    [
        ({"prefs": {"enabled": True, "coder": "default"}}, "prefs.coder and miti.coder are both 'default'"),
        ({"prefs": {"enabled": False}}, "dpo.enabled needs train.enabled and prefs.enabled"),
        ({"prefs": {"enabled": True, "coder": "x", "adapter": "a"}}, "prefs.adapter is set by the pipeline"),
        ({"dpo": {"enabled": True, "adapter": "a"}}, "dpo.adapter is set by the pipeline"),
        ({"train": {"method": "dpo"}}, "train.method is set by the pipeline"),
    ],
)
def test_config_errors(over, what):
    with pytest.raises(ValidationError, match=what):
        steer(**over)


def test_off_by_default():
    cfg = ExperimentConfig.model_validate({"sources": [{"kind": "demo"}]})
    assert not cfg.prefs.enabled and not cfg.dpo.enabled
    assert [s for _, _, s in cfg.systems()] == ["base", "finetuned"]


def test_the_dpo_counselor_is_simulated_with_its_own_adapter_when_steered_ones_are(tmp_path):
    from mi_llm.pipeline import simulate_stages

    sim = {"enabled": True, "personas": "demo:en", "sessions": 1, "max_rounds": 1}
    plain, steered = steer(simulate=sim), steer(simulate={**sim, "steered": True})
    assert [s for _, _, s in plain.simulated_systems()] == ["base", "finetuned"]
    assert [s for _, _, s in steered.simulated_systems()] == ["base", "finetuned", "dpo"]
    paths = RunPaths(tmp_path)
    m = steered.models[0]
    stages = {s.name: s for s in simulate_stages(steered, paths, m)}
    assert list(stages) == [f"{m.key}/simulate-{s}" for s in ("base", "finetuned", "dpo")]
    dpo_inputs = stages[f"{m.key}/simulate-dpo"].inputs
    assert paths.preference_adapter(m.key).weights in dpo_inputs
    assert paths.adapter(m.key).weights not in dpo_inputs
    assert paths.adapter(m.key).weights in stages[f"{m.key}/simulate-finetuned"].inputs


def test_a_held_apart_pairs_coder_is_trained_in_the_run_before_the_pairs(tmp_path):
    import json

    from mi_llm.pipeline import data_stages, pairs_coder_stage, prefs_stage
    from mi_llm.stages import StageRunner

    cfg = steer(prefs={"enabled": True, "k": 2, "coder": "held-apart"}, split={"train": 4, "test": 2, "seed": 1})
    paths = RunPaths(tmp_path / "run")
    runner = StageRunner(paths.root)
    for stage in data_stages(cfg, paths):
        runner(stage)
    stage = pairs_coder_stage(cfg, paths)
    assert not runner(stage).skipped and runner(stage).skipped
    info = json.loads((paths.pairs_coder / "coder.json").read_text())
    test_ids = {json.loads(line)["dialogue_id"] for line in paths.build.test_samples.read_text().splitlines()}
    assert info["info"]["experts"] == ["ngram"] and info["info"]["quick"]
    assert set(info["info"]["excluded"]["ids"]) == test_ids
    prefs = prefs_stage(cfg, paths, cfg.models[0])
    assert paths.pairs_coder / "coder.json" in prefs.inputs
    # a coder named by the config is used as it is: no pairs-coder stage, no such input
    named = prefs_stage(steer(), paths, cfg.models[0])
    assert paths.pairs_coder / "coder.json" not in named.inputs


def test_the_steered_demo_adds_stages_and_keeps_the_demos_own():
    """`mi-llm demo --steer` after `mi-llm demo` runs only the new stages: every stage the two
    share has the same settings and inputs."""
    from mi_llm.cli.pipeline import demo_config, steered_demo
    from mi_llm.config import load_config
    from mi_llm.pipeline import model_stages, simulate_stages

    demo = load_config(demo_config())
    steered = steered_demo(demo)
    assert [s for _, _, s in steered.systems()] == ["base", "finetuned", "dpo"]
    assert steered.prefs.coder == "held-apart" != steered.miti.coder
    assert steered.dpo.max_length == demo.train.max_length and steered.name == demo.name
    paths = RunPaths("runs/demo")
    m = demo.models[0]

    def stages(cfg):
        return {s.name: s for s in [*model_stages(cfg, paths, m), *simulate_stages(cfg, paths, m)]}

    plain, more = stages(demo), stages(steered)
    assert set(more) - set(plain) == {
        f"{m.key}/{s}" for s in ("prefs", "dpo", "predict-dpo", "evaluate-dpo", "simulate-dpo")
    }
    for name, stage in plain.items():
        assert (more[name].params, more[name].inputs) == (stage.params, stage.inputs), name
