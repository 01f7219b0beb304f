"""Build coded sessions by hand for the MITI tests."""

from __future__ import annotations

from typing import Any

from mi_llm.corpus.schema import Dialogue

_N = 0


def coded(
    volleys: list[list[str | None]],
    globals: dict[str, int] | None = None,
    *,
    id: str | None = None,
    language: str = "en",
    texts: list[list[str]] | None = None,
) -> Dialogue:
    """A dialogue with one client turn before each volley; volley k's utterances get the codes given."""
    global _N
    _N += 1
    turns: list[dict[str, Any]] = []
    for k, codes in enumerate(volleys):
        utts = texts[k] if texts else [f"Utterance {k}.{j}." for j in range(len(codes))]
        turns.append({"role": "client", "text": f"client {k}"})
        turns.append(
            {
                "role": "counselor",
                "text": " ".join(utts),
                "codes": [{"text": t, "code": c} for t, c in zip(utts, codes)],
            }
        )
    return Dialogue.model_validate(
        {
            "id": id or f"session-{_N}",
            "source": "test",
            "language": language,
            "turns": turns,
            "miti_globals": globals,
        }
    )


def coded_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return coded(*args, **kwargs).model_dump(mode="json", exclude_none=True)
