"""Each backend's options (mi_llm.llm.backends.config) are its constructor's, with its defaults;
an experiment config naming an option its backend does not take fails where it is written."""

from __future__ import annotations

import inspect

import pytest

from mi_llm.config import ExperimentConfig
from mi_llm.llm.backends.config import BACKEND_CONFIGS, HFConfig, LlamaCppConfig, OpenAIConfig, VLLMConfig


def constructor_options(backend: type) -> dict[str, object]:
    params = inspect.signature(backend.__init__).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.name not in ("self", "model", "adapter") and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def backend_classes() -> list[tuple[type, type]]:
    from mi_llm.llm.backends.hf import HFBackend
    from mi_llm.llm.backends.llamacpp import LlamaCppBackend
    from mi_llm.llm.backends.openai_api import OpenAIBackend
    from mi_llm.llm.backends.vllm import VLLMBackend

    return [
        (HFConfig, HFBackend),
        (LlamaCppConfig, LlamaCppBackend),
        (OpenAIConfig, OpenAIBackend),
        (VLLMConfig, VLLMBackend),
    ]


@pytest.mark.parametrize("config, backend", backend_classes(), ids=lambda c: c.__name__)
def test_config_is_the_backends_own_options(config, backend) -> None:
    defaults = {name: field.get_default() for name, field in config.model_fields.items()}
    assert defaults == constructor_options(backend)


def test_every_backend_has_its_options() -> None:
    assert set(BACKEND_CONFIGS) == {"hf", "llamacpp", "openai", "vllm", "auto"}


@pytest.mark.parametrize(
    "backend, options, what",
    [
        ("llamacpp", {"paralel": 16}, "no option 'paralel'"),
        ("hf", {"n_ctx": 2048}, "no option 'n_ctx'"),
        ("llamacpp", {"parallel": 0}, "parallel"),
        ("nosuch", {}, "unknown backend 'nosuch'"),
    ],
)
def test_bad_backend_options_are_config_errors(backend, options, what) -> None:
    with pytest.raises(ValueError, match=what):
        ExperimentConfig(sources=[{"kind": "demo"}], models=[{"backend": backend, "backend_options": options}])


def test_auto_takes_the_options_of_either_backend_it_may_become() -> None:
    cfg = ExperimentConfig(
        sources=[{"kind": "demo"}], models=[{"backend": "auto", "backend_options": {"parallel": 16, "batch_size": 4}}]
    )
    assert cfg.models[0].backend_options == {"parallel": 16, "batch_size": 4}
