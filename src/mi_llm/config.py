"""The experiment config (`mi-llm run CONFIG.yaml`): pydantic, validated, the one home of defaults."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mi_llm.errors import InputError, MiLlmError
from mi_llm.layout import SYSTEMS

if TYPE_CHECKING:
    from mi_llm.llm.backends.base import GenerationConfig
    from mi_llm.train.config import TrainConfig as TrainOptions


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
    def _path_needed(self) -> "SourceConfig":
        if self.kind != "demo" and not self.path:
            raise ValueError(f"source {self.kind!r} needs a path")
        return self


class TranscribeConfig(_Strict):
    enabled: bool = False
    backend: str = "openai"
    model: str = "gpt-4o"
    base_url: str | None = None
    concurrency: int = 4
    dialogues: int | None = Field(
        None, ge=1,
        description="how many imported dialogues to rewrite (a seeded sample); default: what a split given "
                    "in counts needs plus 5% for rewrites that fail validation, else all")


class SplitConfig(_Strict):
    train: float = 2000
    test: float = 40
    seed: int = 42
    history_budget: int | None = None
    tokenizer: str = "chars"


class ModelConfig(_Strict):
    name: str = "gemma-3-270m"
    label: str | None = Field(None, description="short name in reports; defaults to the model name")
    backend: str = Field("hf", description="generation backend for predictions (hf, llamacpp, openai, vllm; auto: llamacpp where it passes its crash probe on this CPU, else hf)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend, e.g. parallel: 8")

    @property
    def key(self) -> str:
        return (self.label or self.name).replace("/", "_")


class GenerationSettings(_Strict):
    """A preset of mi_llm.llm.backends (greedy by default) with a few fields changed."""

    preset: str = "greedy"
    max_new_tokens: int = 128
    batch_size: int = 8
    limit: int | None = Field(None, description="predict only the first N test samples")
    seed: int = 42


class MitiSettings(_Strict):
    enabled: bool = True
    coder: str = "default"


class ExperimentConfig(_Strict):
    name: str = "experiment"
    sources: list[SourceConfig]
    transcribe: TranscribeConfig = TranscribeConfig()
    split: SplitConfig = SplitConfig()
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    # Options of mi_llm.train.config.TrainConfig (the paper's defaults live there) plus
    # `enabled`; validated against it when the config is loaded.
    train: dict[str, Any] = Field(default_factory=dict)
    generation: GenerationSettings = GenerationSettings()
    miti: MitiSettings = MitiSettings()

    @model_validator(mode="after")
    def _unique_labels(self) -> "ExperimentConfig":
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError(f"model labels must be unique: {keys}")
        return self

    @model_validator(mode="after")
    def _train_options(self) -> "ExperimentConfig":
        self.train_options("model", "data", "output")  # raises on unknown or bad options
        return self

    @model_validator(mode="after")
    def _generation_preset(self) -> "ExperimentConfig":
        self.generation_config()
        return self

    @property
    def train_enabled(self) -> bool:
        return bool(self.train.get("enabled", True))

    def systems(self) -> list[tuple[str, str, str]]:
        """(label, model key, system) of every system whose predictions a run makes: each
        model's base, and its fine-tuned version when training is on."""
        systems = SYSTEMS if self.train_enabled else SYSTEMS[:1]
        return [(f"{m.key} {system}", m.key, system) for m in self.models for system in systems]

    def train_options(self, model: str, data: str, output: str) -> "TrainOptions":
        from mi_llm.train.config import TrainConfig as TrainOptions

        opts = {k: v for k, v in self.train.items() if k != "enabled"}
        for fixed in ("model", "data", "output"):
            if fixed in opts:
                raise ValueError(f"train.{fixed} is set by the pipeline; remove it")
        return TrainOptions(model=model, data=data, output=output, **opts)

    def generation_config(self) -> "GenerationConfig":
        from mi_llm.llm.backends.base import preset

        g = self.generation
        try:
            return preset(g.preset, max_new_tokens=g.max_new_tokens, seed=g.seed)
        except MiLlmError as e:
            raise ValueError(str(e)) from None


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
        raise InputError(path, f"invalid YAML: {getattr(e, 'problem', e)}", None if line is None else line + 1) from None
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "config"
        raise InputError(path, f"{loc}: {first['msg']}", _line_of(text, first["loc"])) from None
