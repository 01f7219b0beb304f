"""Token prices for cost accounting, in US dollars per million tokens.

The defaults are APPROXIMATE list prices of a few OpenAI models as published in mid-2025
(`PRICES_AS_OF`); providers change them and bill cached input, batch use and regions
differently. Check your provider's price page and pass `--prices FILE` for real budgets.
A model with no known price has an unknown cost (shown as n/a), never a cost of 0; local
backends (hf, llamacpp, vllm) cost 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import describe_validation_error

PRICES_AS_OF = "2025-06"
LOCAL_BACKENDS = ("hf", "llamacpp", "vllm")


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0, description="USD per 1M prompt tokens")
    output: float = Field(ge=0, description="USD per 1M completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "gpt-4.1": Price(input=2.00, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
    "gpt-4-turbo": Price(input=10.00, output=30.00),
    "gpt-4": Price(input=30.00, output=60.00),
    "gpt-3.5-turbo": Price(input=0.50, output=1.50),
}


@dataclass
class PriceTable:
    prices: dict[str, Price]

    def lookup(self, model: str) -> Price | None:
        """Exact name, else the longest known name that the model's name extends with '-'
        (a dated snapshot such as gpt-4o-2024-08-06); 'org/name' is tried as 'name' too."""
        for name in (model, model.rsplit("/", 1)[-1]):
            if name in self.prices:
                return self.prices[name]
            stems = [k for k in self.prices if name.startswith(k + "-")]
            if stems:
                return self.prices[max(stems, key=len)]
        return None

    def cost(self, backend: str, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        if backend in LOCAL_BACKENDS:
            return 0.0
        price = self.lookup(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The defaults, overridden and extended by `path` (YAML or JSON):
    `{model: {input: USD per 1M tokens, output: USD per 1M tokens}}`, optionally under `models:`."""
    prices = dict(DEFAULT_PRICES)
    if path is None:
        return PriceTable(prices)
    path = Path(path)
    if not path.is_file():
        raise MiLlmError(f"{path}: no such price file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot parse the price table: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("models"), dict):
        raw = raw["models"]
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping {model: {input: ..., output: ...}}")
    for name, value in raw.items():
        try:
            prices[str(name)] = Price.model_validate(value)
        except ValidationError as e:
            raise InputError(path, f"{name}: {describe_validation_error(e)}") from None
    return PriceTable(prices)
