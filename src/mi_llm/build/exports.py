"""The build folder's exports of round samples or whole dialogues: LLaMA-Factory (sharegpt
JSON + dataset_info.json) and OpenAI chat fine-tuning JSONL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from mi_llm.build.samples import Sample, system_prompt_for
from mi_llm.corpus.schema import Dialogue
from mi_llm.io import atomic_writer, write_json, write_jsonl
from mi_llm.layout import DATASET_INFO, EXPORT_META, llamafactory_dataset, llamafactory_file, openai_file

ExportMode = Literal["rounds", "dialogues"]


def _sharegpt_record(system: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    conv = []
    for client, counselor in pairs:
        conv += [{"from": "human", "value": client}, {"from": "gpt", "value": counselor}]
    return {"conversations": conv, "system": system}


def _openai_record(system: str, pairs: Sequence[tuple[str, str]], train_all: bool) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i, (client, counselor) in enumerate(pairs):
        msgs.append({"role": "user", "content": client})
        last = i == len(pairs) - 1
        # OpenAI fine-tuning: weight 0 keeps earlier replies as context only, so a round
        # sample trains on r_t alone, as in the paper.
        msgs.append({"role": "assistant", "content": counselor, **({} if (train_all or last) else {"weight": 0})})
    return {"messages": msgs}


def export_records(
    split: list[Sample] | list[Dialogue], mode: ExportMode, system_overrides: dict[str, str] | None = None
) -> list[tuple[str, list[tuple[str, str]]]]:
    """(system, rounds) per record: one per sample, or one per dialogue with every round."""
    if mode == "rounds":
        return [(s.system, [*s.history, (s.query, s.target)]) for s in cast("list[Sample]", split)]
    return [
        (system_prompt_for(d.language, system_overrides), [(c.text, r.text) for c, r in d.rounds()])
        for d in cast("list[Dialogue]", split)
    ]


def write_llamafactory(out: Path, splits: dict[str, list[tuple[str, list[tuple[str, str]]]]], mode: ExportMode) -> None:
    """sharegpt JSON files plus the dataset_info.json that registers them."""
    info = {}
    for name, records in splits.items():
        fname = llamafactory_file(name)
        with atomic_writer(out / fname) as f:
            json.dump([_sharegpt_record(s, p) for s, p in records], f, ensure_ascii=False, indent=1)
        info[llamafactory_dataset(name)] = {
            "file_name": fname,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        }
    write_json(out / DATASET_INFO, info)
    # Round records carry their history as earlier turns: train with `mask_history: true`
    # so only r_t is learned, as in the paper (dialogue records train on every reply).
    write_json(out / EXPORT_META, {"mode": mode, "mask_history": mode == "rounds"})


def write_openai(out: Path, splits: dict[str, list[tuple[str, list[tuple[str, str]]]]], mode: ExportMode) -> None:
    for name, records in splits.items():
        write_jsonl(out / openai_file(name), (_openai_record(s, p, train_all=mode == "dialogues") for s, p in records))
