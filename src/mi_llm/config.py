"""The experiment config (`mi-llm run CONFIG.yaml`): pydantic, validated.

Naming rule: every settings model is `<Stage>Config` (a part of one `<Stage><Part>Config`, a
backend's `<Backend>Config`), defined in its stage's package: TrainConfig (train.config),
TranscribeConfig (transcribe.config), PredictConfig (evaluate.config), ServeConfig
(serve.config), the backends' own options (llm.backends.config). Each command builds its
options from its model (cli.options.field_option) and the experiment config composes the
same models, so no default is written twice. Where the pipeline adds options of its own
(`enabled`, how many dialogues to rewrite) or sets some itself (paths, the simulated
counselor), the section is an
`Experiment<Stage>Config` subclass here. BuildConfig is the build stage's (build.config).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mi_llm.build.config import BuildConfig
from mi_llm.build.strategy import check_code
from mi_llm.errors import InputError, MiLlmError
from mi_llm.evaluate.config import PredictConfig
from mi_llm.layout import PREFERENCE_SYSTEM, SYSTEMS, steered_system
from mi_llm.llm.backends.config import check_backend_options
from mi_llm.llm.resolve import DEFAULT_MODEL
from mi_llm.prefs.config import PrefsConfig
from mi_llm.simulate.config import SimulateConfig
from mi_llm.train.config import TrainConfig
from mi_llm.transcribe.config import TranscribeConfig

if TYPE_CHECKING:
    from mi_llm.llm.backends.base import GenerationConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """One corpus to import: an importer name and a path, or the bundled demo corpus."""

    kind: str = Field(description="importer name (cpsycound, annomi, ...) or 'demo'")
    path: str | None = Field(None, description="file or folder; not used by 'demo'")
    language: Literal["zh", "en"] | None = None
    style: Literal["raw", "mi"] | None = Field(None, description="demo: which part of the bundled corpus")
    limit: int | None = Field(None, ge=1, description="keep only the first N dialogues")

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.kind != "demo" and not self.path:
            raise ValueError(f"source {self.kind!r} needs a path")
        return self


class ExperimentTranscribeConfig(TranscribeConfig):
    """`transcribe:`: TranscribeConfig (every option of `mi-llm transcribe`) and whether, and
    how much, the pipeline rewrites."""

    enabled: bool = False
    dialogues: int | None = Field(
        None,
        ge=1,
        description="how many imported dialogues to rewrite (a seeded sample); default: what a split given "
        "in counts needs plus 5% for rewrites that fail validation, else all",
    )

    def transcribe_config(self) -> TranscribeConfig:
        return TranscribeConfig.model_validate(self.model_dump(exclude={"enabled", "dialogues"}))


# TrainConfig fields the pipeline sets for each model (its name, the build folder, the adapter
# folder); the train stage is SFT from the base (the dpo stage trains preferences).
PIPELINE_TRAIN_FIELDS = ("model", "data", "output", "method", "adapter")


class ExperimentTrainConfig(TrainConfig):
    """`train:`: every TrainConfig option (every option of `mi-llm train`, the paper's defaults)
    but those the pipeline sets, and whether to train at all."""

    enabled: bool = True
    # set by the pipeline (PIPELINE_TRAIN_FIELDS); never part of the config
    model: None = Field(None, exclude=True)  # type: ignore[assignment]
    data: None = Field(None, exclude=True)  # type: ignore[assignment]
    output: None = Field(None, exclude=True)  # type: ignore[assignment]
    method: None = Field(None, exclude=True)  # type: ignore[assignment]
    adapter: None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _not_pipeline_fields(cls, data: Any) -> Any:
        for fixed in PIPELINE_TRAIN_FIELDS:
            if isinstance(data, dict) and fixed in data:
                raise ValueError(f"train.{fixed} is set by the pipeline; remove it")
        return data

    def train_config(self, model: str, data: str, output: str) -> TrainConfig:
        return TrainConfig.model_validate(
            {**self.model_dump(exclude={"enabled"}), "model": model, "data": data, "output": output}
        )

    def given(self) -> dict[str, Any]:
        """The options the config sets (the train stage's fingerprint, the report's settings)."""
        return self.model_dump(exclude_unset=True)


class ExperimentPredictConfig(PredictConfig):
    """`generation:`: PredictConfig (every decoding option of `mi-llm predict`; its `strategy`
    steers the fine-tuned system) and more fine-tuned systems, each predicted with its own
    strategy, side by side in one run (one training)."""

    strategies: list[str] = Field(
        default_factory=list,
        description="one more fine-tuned system per strategy (model, a MITI code, policy:FILE), e.g. [CR, Q]",
    )

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            if spec != "model" and not spec.startswith("policy:"):
                try:
                    check_code(spec, "strategies")
                except MiLlmError as e:
                    raise ValueError(str(e)) from None
        if len({steered_system(s) for s in specs}) != len(specs):
            raise ValueError(f"strategies must differ: {specs}")
        return specs

    def fingerprint(self) -> dict[str, Any]:
        """The settings predictions depend on; the strategy options only when set, so that
        predictions from before they existed stay up to date."""
        return {k: v for k, v in self.model_dump().items() if k not in ("strategy", "strategies") or v}


# SimulateConfig fields the pipeline sets: each model's base and fine-tuned counselor, and the
# strategy each system is predicted with (ExperimentConfig.strategy_of).
PIPELINE_SIMULATE_FIELDS = ("counselor", "counselor_adapter", "counselor_backend", "counselor_url", "strategy")


class ExperimentSimulateConfig(SimulateConfig):
    """`simulate:`: every SimulateConfig option (every option of `mi-llm simulate`) but the
    counselor, which the pipeline sets (each model's base and fine-tuned version, with the same
    personas and seeds), and whether to simulate at all."""

    enabled: bool = False
    steered: bool = Field(
        False,
        description="also simulate the steered counselors: the fine-tuned model steered by each of "
        "generation.strategies, and the preference-trained one when the dpo stage is on (one more "
        "set of sessions each)",
    )
    # set by the pipeline (PIPELINE_SIMULATE_FIELDS); never part of the config
    counselor: None = Field(None, exclude=True)  # type: ignore[assignment]
    counselor_adapter: None = Field(None, exclude=True)
    counselor_backend: None = Field(None, exclude=True)  # type: ignore[assignment]
    counselor_url: None = Field(None, exclude=True)
    strategy: None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _not_pipeline_fields(cls, data: Any) -> Any:
        for fixed in PIPELINE_SIMULATE_FIELDS:
            if isinstance(data, dict) and fixed in data:
                why = (
                    "generation.strategy and generation.strategies"
                    if fixed == "strategy"
                    else "each model, base and fine-tuned"
                )
                raise ValueError(f"simulate.{fixed} is set by the pipeline ({why}); remove it")
        return data

    def simulate_config(
        self, model: str, adapter: str | None, backend: str, strategy: str | None = None
    ) -> SimulateConfig:
        return SimulateConfig.model_validate(
            {
                **self.model_dump(exclude={"enabled", "steered"}),
                "counselor": model,
                "counselor_adapter": adapter,
                "counselor_backend": backend,
                "strategy": strategy,
            }
        )

    def fingerprint(self) -> dict[str, Any]:
        """The settings a simulate stage depends on: not `steered`, which chooses the systems, not
        how one is simulated (turning it on leaves the other systems' sessions as they are)."""
        return self.model_dump(mode="json", exclude={"steered"})


# PrefsConfig fields the pipeline sets: it samples from each model's fine-tuned adapter with the
# model's own backend.
PIPELINE_PREFS_FIELDS = ("model", "adapter", "backend")


# `prefs.coder` value: the run trains its own pairs coder (pipeline.pairs_coder_stage)
HELD_APART_CODER = "held-apart"


class ExperimentPrefsConfig(PrefsConfig):
    """`prefs:`: every option of `mi-llm prefs build` but those the pipeline sets, and whether to
    build preference pairs (from each fine-tuned model, on the training rounds)."""

    enabled: bool = False
    model: None = Field(None, exclude=True)  # type: ignore[assignment]
    adapter: None = Field(None, exclude=True)
    backend: None = Field(None, exclude=True)  # type: ignore[assignment]
    coder: str = Field(
        "default",
        description="the MITI coder that scores the sampled replies: default, a folder, llm:..., or "
        f"{HELD_APART_CODER!r} (the run trains one: n-grams, fixed settings, on the bundled demo codes "
        "without the run's test dialogues; another recipe than the shipped coder's)",
    )

    @model_validator(mode="before")
    @classmethod
    def _not_pipeline_fields(cls, data: Any) -> Any:
        for fixed in PIPELINE_PREFS_FIELDS:
            if isinstance(data, dict) and fixed in data:
                raise ValueError(
                    f"prefs.{fixed} is set by the pipeline (each model, its adapter and backend); remove it"
                )
        return data

    def prefs_config(self, model: str, adapter: str, backend: str, coder: str | None = None) -> PrefsConfig:
        """`coder`: the folder of the run's own pairs coder, when `coder` is held-apart."""
        given = self.model_dump(exclude={"enabled"})
        if coder is not None:
            given["coder"] = coder
        return PrefsConfig.model_validate({**given, "model": model, "adapter": adapter, "backend": backend})


class ExperimentDpoConfig(TrainConfig):
    """`dpo:`: preference training (TrainConfig's options; method dpo or kto) of each fine-tuned
    adapter on its prefs pairs; the pipeline sets the model, data, adapter and output."""

    enabled: bool = False
    method: Literal["dpo", "kto"] = "dpo"
    model: None = Field(None, exclude=True)  # type: ignore[assignment]
    data: None = Field(None, exclude=True)  # type: ignore[assignment]
    output: None = Field(None, exclude=True)  # type: ignore[assignment]
    adapter: None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _not_pipeline_fields(cls, data: Any) -> Any:
        for fixed in ("model", "data", "output", "adapter"):
            if isinstance(data, dict) and fixed in data:
                raise ValueError(f"dpo.{fixed} is set by the pipeline; remove it")
        return data

    def train_config(self, model: str, data: str, adapter: str, output: str) -> TrainConfig:
        return TrainConfig.model_validate(
            {**self.model_dump(exclude={"enabled"}), "model": model, "data": data, "adapter": adapter, "output": output}
        )

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class ModelConfig(_Strict):
    name: str = DEFAULT_MODEL
    label: str | None = Field(None, description="short name in reports; defaults to the model name")
    backend: str = Field(
        "hf",
        description="generation backend for predictions (hf, llamacpp, openai, vllm; auto: llamacpp where it passes its crash probe on this CPU, else hf)",
    )
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="the backend's own options (mi_llm.llm.backends.config), e.g. parallel: 8"
    )

    @model_validator(mode="after")
    def _backend_options(self) -> ModelConfig:
        try:
            check_backend_options(self.backend, self.backend_options)
        except MiLlmError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def key(self) -> str:
        return (self.label or self.name).replace("/", "_")


class MitiConfig(_Strict):
    enabled: bool = True
    coder: str = Field("default", description="the coder that grades every system (miti.json)")


class ExperimentConfig(_Strict):
    name: str = "experiment"
    sources: list[SourceConfig]
    transcribe: ExperimentTranscribeConfig = Field(default_factory=ExperimentTranscribeConfig)
    split: BuildConfig = BuildConfig()
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    train: ExperimentTrainConfig = Field(default_factory=ExperimentTrainConfig)
    generation: ExperimentPredictConfig = Field(default_factory=ExperimentPredictConfig)
    miti: MitiConfig = MitiConfig()
    simulate: ExperimentSimulateConfig = Field(default_factory=ExperimentSimulateConfig)
    prefs: ExperimentPrefsConfig = Field(default_factory=ExperimentPrefsConfig)
    dpo: ExperimentDpoConfig = Field(default_factory=ExperimentDpoConfig)

    @model_validator(mode="after")
    def _unique_labels(self) -> ExperimentConfig:
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError(f"model labels must be unique: {keys}")
        return self

    @model_validator(mode="after")
    def _preference_stages(self) -> ExperimentConfig:
        if self.dpo.enabled and not (self.prefs.enabled and self.train.enabled):
            raise ValueError(
                "dpo.enabled needs train.enabled and prefs.enabled (it trains the SFT adapter on its pairs)"
            )
        if self.prefs.enabled and not self.train.enabled:
            raise ValueError("prefs.enabled needs train.enabled (pairs are sampled from the fine-tuned model)")
        # No Goodhart: the coder that chose the pairs must not be the one that grades the result.
        if self.dpo.enabled and self.miti.enabled and self.prefs.coder == self.miti.coder:
            raise ValueError(
                f"prefs.coder and miti.coder are both {self.miti.coder!r}: grade the preference-trained model "
                "with another coder (e.g. one from `mi-llm miti train-coder` on other data or another recipe)"
            )
        return self

    @property
    def dpo_enabled(self) -> bool:
        return self.dpo.enabled

    @property
    def train_enabled(self) -> bool:
        return self.train.enabled

    def systems(self) -> list[tuple[str, str, str]]:
        """(label, model key, system) of every system whose predictions a run makes: each
        model's base, and its fine-tuned version when training is on (and that version
        steered by each of `generation.strategies`: system `finetuned-<strategy>`), and its
        preference-trained version (`dpo`) when the dpo stage is on."""
        systems = SYSTEMS if self.train_enabled else SYSTEMS[:1]
        out = []
        for m in self.models:
            out += [(f"{m.key} {system}", m.key, system) for system in systems]
            if self.train_enabled:  # the fine-tuned model steered by each of `generation.strategies`
                out += [(f"{m.key} {steered_system(s)}", m.key, steered_system(s)) for s in self.generation.strategies]
            if self.dpo_enabled:  # preference-trained from the fine-tuned adapter (the dpo stage)
                out.append((f"{m.key} {PREFERENCE_SYSTEM}", m.key, PREFERENCE_SYSTEM))
        return out

    def simulated_systems(self) -> list[tuple[str, str, str]]:
        """(label, model key, system) of the counselors the simulate stage runs: each model's
        base and fine-tuned version, each with its strategy (`strategy_of`), and the steered
        ones (each strategy's, and the preference-trained `dpo` one) only with
        `simulate.steered` (each is another set of sessions); none when it is off."""
        if not self.simulate.enabled:
            return []
        steered = set()
        if self.simulate.steered:
            steered = {steered_system(s) for s in self.generation.strategies} | {PREFERENCE_SYSTEM}
        return [x for x in self.systems() if x[2] in SYSTEMS or x[2] in steered]

    def strategy_of(self, system: str) -> str | None:
        """The strategy a system is predicted with: `generation.strategy` for the fine-tuned
        one, its own for each of `generation.strategies`, none for the base model."""
        if system == "finetuned":
            return self.generation.strategy
        return next((s for s in self.generation.strategies if steered_system(s) == system), None)

    def train_options(self, model: str, data: str, output: str) -> TrainConfig:
        return self.train.train_config(model, data, output)

    def generation_config(self) -> GenerationConfig:
        return self.generation.generation_config()


def _line_of(text: str, loc: tuple) -> int | None:
    """Line of the YAML node at pydantic's error location (the deepest node that exists)."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise MiLlmError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InputError(
            path, f"invalid YAML: {getattr(e, 'problem', e)}", None if line is None else line + 1
        ) from None
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "config"
        raise InputError(path, f"{loc}: {first['msg']}", _line_of(text, first["loc"])) from None
