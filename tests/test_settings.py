"""One settings model per stage: the CLI options are built from it (no default written twice)
and an experiment config can set every option the command line can."""

from __future__ import annotations

from typing import Any

import click
import pytest
import typer
from pydantic import BaseModel

from mi_llm.cli import _register_all, app
from mi_llm.cli.options import field_option
from mi_llm.config import ExperimentConfig
from mi_llm.errors import MiLlmError
from mi_llm.train.config import TrainConfig
from mi_llm.transcribe.config import TranscribeConfig, TranscribeGenerationConfig, ValidationConfig

# Options of `mi-llm train` an experiment config does not take, and why.
TRAIN_CLI_ONLY = {
    "model": "the pipeline trains each model of `models:`",
    "data": "the pipeline trains on its own build folder",
    "output": "the pipeline writes each adapter into its run directory",
    "resume": "the pipeline always resumes an interrupted training",
    "export_llamafactory": "writes a file outside the run; `mi-llm train` does it for one adapter",
    "verbose": "logging, not a setting: `mi-llm run -v`",
    "method": "the train stage is SFT; preference training is the dpo stage (`dpo:`)",
    "adapter": "the dpo stage starts from the adapter the train stage wrote",
}
# Options of `mi-llm prefs build` an experiment config does not take, and why.
PREFS_CLI_ONLY = {
    "data": "the pipeline samples on its own training rounds",
    "output": "the pipeline writes models/<key>/prefs.jsonl",
    "model": "each model of `models:`",
    "adapter": "each model's fine-tuned adapter",
    "backend": "each model's own backend",
    "parallel": "each model's backend_options",
    "threads": "each model's backend_options",
    "export_llamafactory": "writes files outside the run; `mi-llm prefs export` does it",
    "export_trl": "writes files outside the run; `mi-llm prefs export` does it",
    "verbose": "logging, not a setting",
}
# CLI option -> (field, the field's value when the flag is given)
TRAIN_FLAGS = {"skip_long": ("on_overflow", "skip")}

# Options of `mi-llm transcribe` an experiment config does not take, and why.
TRANSCRIBE_CLI_ONLY = {
    "dialogues": "the pipeline rewrites its imported dialogues",
    "output": "the pipeline writes data/mi_dialogues.jsonl",
    "adapter": "set as backend_opts: {adapter: FOLDER}",
    "code": "the pipeline's miti stage codes every system",
    "coder": "the pipeline's miti stage codes every system (miti.coder)",
    "verbose": "logging, not a setting",
}
# CLI option -> (model holding the field, path of the field under `transcribe:`)
TRANSCRIBE_FIELDS: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "timeout": (TranscribeConfig, ("timeout_s",)),
    "prices": (TranscribeConfig, ("prices_path",)),
    "cache": (TranscribeConfig, ("cache_path",)),
    "temperature": (TranscribeGenerationConfig, ("gen", "temperature")),
    "max_tokens": (TranscribeGenerationConfig, ("gen", "max_tokens")),
    "seed": (TranscribeGenerationConfig, ("gen", "seed")),
    "json_mode": (TranscribeGenerationConfig, ("gen", "json_mode")),
    "min_client_similarity": (ValidationConfig, ("validation", "min_client_similarity")),
    "allow_client_count_change": (ValidationConfig, ("validation", "keep_client_count")),
}


def command(name: str) -> click.Command:
    _register_all()
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def options(name: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in command(name).params if p.name}


def other_value(field: str, model: type[BaseModel]) -> Any:
    """A valid value of `field` other than its default."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    choices = getattr(info.annotation, "__args__", ())
    if isinstance(default, bool):
        return not default
    if all(isinstance(c, str) for c in choices) and len(choices) > 1:  # a Literal
        return next(c for c in choices if c != default)
    if isinstance(default, str):
        return "q_proj,v_proj" if field == "target_modules" else default + "-x"
    if default is None:  # an Optional: a value of its type
        kinds = [k for k in choices if k is not type(None)]
        return 3 if kinds[0] is int else "set-x"
    bounds = {type(m).__name__: m for m in info.metadata}
    if "Lt" in bounds or "Le" in bounds:
        return default / 2 if default else 0.5 * getattr(bounds.get("Lt") or bounds["Le"], "lt", 1)
    return default * 2 + 1


def test_every_train_option_can_be_set_in_an_experiment_config() -> None:
    opts = options("train")
    settable = set(opts) - set(TRAIN_CLI_ONLY) - set(TRAIN_FLAGS)
    assert set(TRAIN_CLI_ONLY) <= set(opts), "a command-line-only option is gone: update TRAIN_CLI_ONLY"
    assert settable <= set(TrainConfig.model_fields), (
        f"options with no TrainConfig field: {settable - set(TrainConfig.model_fields)}"
    )
    changed = {name: other_value(name, TrainConfig) for name in sorted(settable)}
    changed.update({field: value for field, value in TRAIN_FLAGS.values()})
    cfg = ExperimentConfig(sources=[{"kind": "demo"}], train=changed)
    resolved = cfg.train_options("m", "d", "o")
    for name, value in changed.items():
        assert getattr(resolved, name) == value, name
        assert resolved.model_dump()[name] != TrainConfig.model_fields[name].get_default(), name


def test_every_prefs_option_can_be_set_in_an_experiment_config() -> None:
    from mi_llm.prefs.config import PrefsConfig

    group = command("prefs")
    opts = {str(p.name): p for p in group.commands["build"].params if p.name}  # type: ignore[attr-defined]
    settable = set(opts) - set(PREFS_CLI_ONLY)
    assert set(PREFS_CLI_ONLY) <= set(opts)
    assert settable <= set(PrefsConfig.model_fields), settable - set(PrefsConfig.model_fields)
    changed = {name: other_value(name, PrefsConfig) for name in sorted(settable)}
    cfg = ExperimentConfig(sources=[{"kind": "demo"}], prefs={"enabled": True, **changed})
    resolved = cfg.prefs.prefs_config("m", "a", "hf")
    for name, value in changed.items():
        assert getattr(resolved, name) == value, name
        assert opts[name].default == PrefsConfig.model_fields[name].get_default(), name


def test_train_options_default_to_train_config() -> None:
    for name, param in options("train").items():
        if name in TrainConfig.model_fields and not param.required:
            assert param.default == TrainConfig.model_fields[name].get_default(), name
    field, when_given = TRAIN_FLAGS["skip_long"]
    assert (options("train")["skip_long"].default is True) == (TrainConfig.model_fields[field].default == when_given)


def test_every_transcribe_option_can_be_set_in_an_experiment_config() -> None:
    opts = options("transcribe")
    settable = set(opts) - set(TRANSCRIBE_CLI_ONLY)
    assert set(TRANSCRIBE_CLI_ONLY) <= set(opts)
    section: dict[str, Any] = {"enabled": True}
    expected: dict[tuple[str, ...], Any] = {}
    for name in sorted(settable):
        model, path = TRANSCRIBE_FIELDS.get(name, (TranscribeConfig, (name,)))
        assert path[-1] in model.model_fields, f"--{name} has no field {'.'.join(path)}"
        value = other_value(path[-1], model)
        expected[path] = value
        (section.setdefault(path[0], {}) if len(path) > 1 else section)[path[-1]] = value
        default = model.model_fields[path[-1]].get_default(call_default_factory=True)
        cli_default = (not default) if name == "allow_client_count_change" else default
        assert opts[name].default == cli_default, f"--{name}: its default is not the model's"
    resolved = ExperimentConfig(sources=[{"kind": "demo"}], transcribe=section).transcribe.transcribe_config()
    for path, value in expected.items():
        got: Any = resolved
        for part in path:
            got = getattr(got, part)
        assert str(got) == str(value) if path[-1].endswith("_path") else got == value, path


@pytest.mark.parametrize("fixed", ["model", "data", "output"])
def test_the_pipeline_sets_the_training_paths(fixed: str) -> None:
    with pytest.raises(ValueError, match=f"train.{fixed} is set by the pipeline"):
        ExperimentConfig(sources=[{"kind": "demo"}], train={fixed: "x"})


def test_the_train_stage_fingerprint_holds_only_what_the_config_sets() -> None:
    cfg = ExperimentConfig(sources=[{"kind": "demo"}], train={"max_steps": 16, "enabled": True})
    assert cfg.train.given() == {"max_steps": 16, "enabled": True}
    assert "model" not in cfg.model_dump()["train"]


def test_field_option_takes_default_help_and_range_from_the_field() -> None:
    opt = field_option(TrainConfig, "lora_dropout", "--lora-dropout")
    assert opt.default == 0.0 and opt.help == TrainConfig.model_fields["lora_dropout"].description

    class P:
        opts = ["--lora-dropout"]

    assert opt.callback(None, P(), 0.5) == 0.5
    with pytest.raises(MiLlmError, match="--lora-dropout must be at least 0 and below 1"):
        opt.callback(None, P(), 1.0)
    assert field_option(TrainConfig, "data").default is ...


def test_the_saved_run_config_reads_back_as_the_same_config() -> None:
    from pathlib import Path

    from mi_llm.ablation import is_ablation, load_ablation
    from mi_llm.config import load_config

    root = Path(__file__).parents[1]
    for path in [*(root / "configs").glob("*.yaml"), root / "src" / "mi_llm" / "resources" / "demo.yaml"]:
        # an ablation (configs/ablation-*.yaml) is one experiment config per arm
        for cfg in load_ablation(path)[1].values() if is_ablation(path) else [load_config(path)]:
            assert ExperimentConfig.model_validate(cfg.model_dump(mode="json")) == cfg, path
