"""Normalisation of imported dialogues, configurable and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mi_llm.corpus.schema import Dialogue, Turn


@dataclass
class NormalizeOptions:
    merge_same_role: bool = True  # join consecutive turns by the same speaker
    drop_empty: bool = True  # drop turns whose text is blank
    joiner_zh: str = ""
    joiner_en: str = " "


@dataclass
class NormalizeStats:
    dialogues: int = 0
    turns: int = 0
    merged: int = 0  # turns folded into the previous turn of the same role
    dropped: int = 0  # empty turns removed
    skipped_dialogues: int = 0  # dialogues left with no turns at all
    rounds: int = 0  # counselor turns answering a client turn
    trailing_client: int = 0  # dialogues ending on a client turn (kept, never a sample)
    by_source: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def merge_meta(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Meta of a merged turn: lists (per-utterance labels, speakers, notes) are concatenated
    in turn order; for any other key the first turn's value is kept."""
    out = dict(first)
    for key, value in second.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], list) and isinstance(value, list):
            out[key] = [*out[key], *value]
    return out


def normalize(d: Dialogue, opts: NormalizeOptions, stats: NormalizeStats) -> Dialogue | None:
    """Return the normalised dialogue (None if nothing is left) and update `stats`."""
    turns: list[Turn] = []
    joiner = opts.joiner_zh if d.language == "zh" else opts.joiner_en
    for t in d.turns:
        text = t.text.strip()
        if opts.drop_empty and not text:
            stats.dropped += 1
            continue
        t = t.model_copy(update={"text": text})
        if opts.merge_same_role and turns and turns[-1].role == t.role:
            prev = turns[-1]
            codes = None
            if prev.codes is not None and t.codes is not None:
                codes = prev.codes + t.codes
            turns[-1] = prev.model_copy(
                update={"text": prev.text + joiner + t.text, "codes": codes, "meta": merge_meta(prev.meta, t.meta)}
            )
            stats.merged += 1
            continue
        turns.append(t)
    if not turns:
        stats.skipped_dialogues += 1
        return None
    out = d.model_copy(update={"turns": turns})
    stats.dialogues += 1
    stats.turns += len(turns)
    stats.rounds += len(out.rounds())
    stats.trailing_client += turns[-1].role == "client"
    stats.by_source[d.source] = stats.by_source.get(d.source, 0) + 1
    return out
