"""The simulate stage end to end: personas checked, backends and coders loaded, sessions run
(runner.simulate), outcomes written (outcomes.write_outcomes), and the simulated clients
compared with real client talk (fidelity.write_fidelity)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import read_dialogues
from mi_llm.layout import SimulatePaths
from mi_llm.llm.backends.base import Backend
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.fidelity import write_fidelity
from mi_llm.simulate.outcomes import write_outcomes
from mi_llm.simulate.persona import PersonaCard
from mi_llm.simulate.runner import ProgressFn, SimulateResult, plan_sessions, simulate


@dataclass
class Side:
    """How one side of the conversation is generated."""

    backend: str  # resolved: never auto
    model: str
    adapter: str | None
    options: dict[str, Any]

    def load(self) -> Backend:
        from mi_llm.llm.backends import get_backend

        return get_backend(self.backend, self.model, adapter=self.adapter, **self.options)


# llama.cpp sequences decoded together: the sessions of a round are one batch
MAX_PARALLEL = 8


def side(
    backend: str, model: str, adapter: str | None, url: str | None, seed: int, sessions: int, retries: int = 2
) -> Side:
    """An endpoint URL means the openai backend; `auto` is resolved as `predict` resolves it.
    An endpoint's requests are retried `retries` times by its client (backoff, Retry-After)."""
    from mi_llm.evaluate.predict import backend_options, resolve_backend

    name = "openai" if url else resolve_backend(backend)
    parallel = max(1, min(sessions, MAX_PARALLEL))
    options = backend_options(name, seed=seed, base_url=url, parallel=parallel)
    if name == "openai":
        options["max_retries"] = retries
    return Side(name, model, adapter, options)


def sides(config: SimulateConfig, counselor_options: Mapping[str, Any] | None = None) -> tuple[Side, Side]:
    """Both sides; `counselor_options` (a run config's model.backend_options) override the counselor's."""
    counselor = side(
        config.counselor_backend,
        config.counselor,
        config.counselor_adapter,
        config.counselor_url,
        config.seed,
        config.sessions,
        config.retries,
    )
    client = side(
        config.client_backend, config.client, None, config.client_url, config.seed, config.sessions, config.retries
    )
    counselor.options.update(counselor_options or {})
    return counselor, client


def same_model(counselor: Side, client: Side) -> bool:
    """One loaded model can play both sides: the same weights (no adapter) through the same backend."""
    return (counselor.backend, counselor.model, counselor.adapter, counselor.options.get("base_url")) == (
        client.backend,
        client.model,
        client.adapter,
        client.options.get("base_url"),
    )


def run_simulate(
    config: SimulateConfig,
    personas: list[PersonaCard],
    output_dir: str | Path,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    counselor_options: Mapping[str, Any] | None = None,
) -> tuple[SimulateResult, dict[str, Any]]:
    """Run the sessions (resuming), then code them and write outcomes.json and the coded sessions."""
    from mi_llm.miti.coders import load_coder
    from mi_llm.miti.coders.client_talk import load_client_coder

    coder = load_coder(config.coder)
    client_coder = load_client_coder(config.client_coder)  # a bad coder fails before any model loads
    config.steering()  # so does a bad policy file
    counselor_side, client_side = sides(config, counselor_options)
    counselor = counselor_side.load()
    try:
        client = counselor if same_model(counselor_side, client_side) else client_side.load()
        try:
            result = simulate(config, personas, counselor, client, coder, output_dir, overwrite, progress)
        finally:
            if client is not counselor:
                client.close()
    finally:
        counselor.close()
    out = Path(output_dir)
    wanted = {p.id for p in plan_sessions(config, personas)}
    sessions = [d for d in read_dialogues(SimulatePaths(out).sessions) if d.id in wanted]
    paths = SimulatePaths(out)
    report = write_outcomes(
        paths.outcomes, sessions, coder, client_coder, failed=len(result.failed), coded_path=paths.coded
    )
    write_fidelity(paths.fidelity, sessions, report)
    return result, report
