"""The one name -> implementation idiom, and the maps that use it."""

from __future__ import annotations

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.registry import Registry


def test_register_get_names_and_aliases() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("round", "circle")
    class Round:
        pass

    reg.add("square", int)
    assert reg.get("round") is Round and reg.get("circle") is Round and reg.get("square") is int
    assert reg.names() == ("round", "circle", "square") and list(reg) == list(reg.names()) and len(reg) == 3
    assert "square" in reg and "oval" not in reg
    with pytest.raises(MiLlmError, match=r"^unknown widget 'oval'; choose one of: round, circle, square$"):
        reg.get("oval")


def test_a_name_cannot_be_taken_twice() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("a", 1)
    reg.add("a", 1)  # the same thing again (a module imported twice) is fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2)


def test_the_project_maps_are_registries() -> None:
    from mi_llm.corpus.download import MANIFESTS
    from mi_llm.corpus.importers import IMPORTERS
    from mi_llm.llm.backends import BACKENDS, PRESETS
    from mi_llm.miti.coders.trained import RECIPES

    assert BACKENDS.names() == ("hf", "llamacpp", "openai", "vllm", "auto")
    assert {"annomi", "sharegpt", "llamafactory", "openai", "dialogues"} <= set(IMPORTERS)
    assert IMPORTERS.get("llamafactory") is IMPORTERS.get("sharegpt")
    assert set(MANIFESTS) == {"cpsycound", "annomi", "smile", "mibot"}
    assert RECIPES.names() == ("embed", "tuned", "encoder", "embed-encoder", "ngram")
    assert PRESETS.names() == ("greedy", "llamafactory")
    with pytest.raises(MiLlmError, match="unknown backend 'nosuch'; choose one of: hf, llamacpp"):
        BACKENDS.get("nosuch")
