"""`mi-llm run CONFIG.yaml` and `mi-llm demo`: a whole experiment into a run directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mi_llm.console import setup_logging
from mi_llm.layout import default_run_dir

if TYPE_CHECKING:
    from mi_llm.config import ExperimentConfig


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)


def _run(config_path: Path, run_dir: Path | None, force: bool, steer: bool = False) -> None:
    import time

    from mi_llm.ablation import is_ablation, print_ablation, run_ablation
    from mi_llm.config import load_config
    from mi_llm.pipeline import print_summary, run_experiment

    setup_logging()
    if is_ablation(config_path):
        print_ablation(run_ablation(config_path, run_dir, force))
        return
    cfg = load_config(config_path)
    if steer:
        cfg = steered_demo(cfg)
    run_dir = run_dir or default_run_dir(cfg.name)
    t0 = time.monotonic()
    runner = run_experiment(cfg, run_dir, force=force, config_path=config_path)
    print_summary(runner, run_dir, time.monotonic() - t0)


def run_cmd(
    config: Path = typer.Argument(..., help="experiment config (YAML); see configs/"),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="where every output goes (default runs/<name>)"),
    force: bool = typer.Option(False, help="rerun every stage even when up to date"),
) -> None:
    """Run an experiment: import, (transcribe), build, predict, train, evaluate, MITI, report; or an
    ablation (a config with `arms:`, e.g. configs/ablation-*.yaml): each arm's run and the table
    that compares them."""
    _run(config, run_dir, force)


def demo_config() -> Path:
    return Path(str(resources.files("mi_llm.resources").joinpath("demo.yaml")))


# `mi-llm demo --steer`: the demo plus its steered model. Preference pairs sampled from the
# fine-tuned model on 24 training rounds (4 replies each, up to 48 tokens as the demo's
# predictions), scored by a pairs coder the run trains without the test dialogues (another
# recipe than the grading coder), DPO of the SFT adapter on them (3 steps of 8 pairs), and
# the dpo model beside base and SFT in the report and the simulated sessions. The demo's own
# stages are the same, so after `mi-llm demo` only the new ones run (README; docs/training.md,
# "Preference training").
DEMO_STEER: dict = {
    "prefs": {
        "enabled": True,
        "k": 4,
        "limit": 24,
        "temperature": 0.8,
        "max_new_tokens": 48,
        "batch_size": 8,
        "coder": "held-apart",
    },
    # no warm-up: of 3 steps, the paper's 10% makes the first one a step at learning rate 0
    "dpo": {
        "enabled": True,
        "method": "dpo",
        "beta": 0.1,
        "max_steps": 3,
        "grad_accum": 8,
        "lr": 5e-5,
        "warmup_ratio": 0.0,
    },
    "simulate": {"steered": True},
}


def steered_demo(cfg: ExperimentConfig) -> ExperimentConfig:
    """The demo config with DEMO_STEER merged in (the dpo stage's length settings the demo's)."""
    from mi_llm.config import ExperimentConfig

    body = cfg.model_dump(mode="json", exclude_unset=True)
    for section, given in DEMO_STEER.items():
        body[section] = {**body.get(section, {}), **given}
    body["dpo"] = {
        **{k: v for k, v in body.get("train", {}).items() if k in ("max_length", "on_overflow")},
        **body["dpo"],
    }
    return ExperimentConfig.model_validate(body)


def demo_cmd(
    run_dir: Path = typer.Option(default_run_dir("demo"), "--run-dir", help="where every output goes"),
    force: bool = typer.Option(False, help="rerun every stage even when up to date"),
    steer: bool = typer.Option(
        False,
        "--steer",
        help="also preference-train the fine-tuned model (MITI-scored pairs, DPO) and report it beside "
        "base and SFT: a few minutes more",
    ),
) -> None:
    """The embedded demo: bundled corpus (zh + en), embedded gemma-3-270m, offline, on a CPU."""
    _run(demo_config(), run_dir, force, steer=steer)
