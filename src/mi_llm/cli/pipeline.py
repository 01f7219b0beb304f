"""`mi-llm run CONFIG.yaml` and `mi-llm demo`: a whole experiment into a run directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from mi_llm.console import setup_logging
from mi_llm.layout import default_run_dir


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)


def _run(config_path: Path, run_dir: Path | None, force: bool) -> None:
    import time

    from mi_llm.ablation import is_ablation, print_ablation, run_ablation
    from mi_llm.config import load_config
    from mi_llm.pipeline import print_summary, run_experiment

    setup_logging()
    if is_ablation(config_path):
        print_ablation(run_ablation(config_path, run_dir, force))
        return
    cfg = load_config(config_path)
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


def demo_cmd(
    run_dir: Path = typer.Option(default_run_dir("demo"), "--run-dir", help="where every output goes"),
    force: bool = typer.Option(False, help="rerun every stage even when up to date"),
) -> None:
    """The embedded demo: bundled corpus (zh + en), embedded gemma-3-270m, offline, on a CPU."""
    _run(demo_config(), run_dir, force)
