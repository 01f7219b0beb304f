"""One idiom for every name -> implementation map (backends, importers, downloaders, ...).

    BACKENDS: Registry[type[Backend]] = Registry("backend")

    @BACKENDS.register("hf")
    class HFBackend(Backend): ...

    BACKENDS.get("hf")      # the class; an unknown name is a one-line error listing the choices
    BACKENDS.names()        # ("hf", ...), in the order they were registered

A registry iterates over its names and answers `name in registry`, so it reads like the
tuple of choices it replaces (`", ".join(BACKENDS)`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mi_llm.errors import MiLlmError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind (`kind`: "backend", "source", ...) and what each stands for."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T, *aliases: str) -> T:
        for n in (name, *aliases):
            if n in self._entries and self._entries[n] is not value:
                raise ValueError(f"{self.kind} {n!r} is registered twice")  # a programming error, not input
            self._entries[n] = value
        return value

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """A decorator: `@REGISTRY.register("name")` on the class or function it names."""

        def decorate(value: T) -> T:
            return self.add(name, value, *aliases)

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise MiLlmError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
