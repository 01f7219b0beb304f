"""Blinded samples for human MITI coding of several systems' replies (`mi-llm miti blind` /
`unblind`).

A human coder who knows which system wrote a reply codes it with that knowledge. `blind`
takes each system's sessions (a run's `miti/<system>.coded.jsonl`: the system's replies in
the test dialogues; simulated sessions; the reference), draws the same dialogues from every
system where they share dialogue ids (paired), gives every session a random id, strips what
names the system (the dialogue's and turns' `meta`) and the automatic codes (the utterance
split stays, as `miti annotate` uses it), and shuffles them. The key (blind id -> system,
dialogue id) is written apart, for whoever unblinds. `unblind` reads the human coder's
export (`miti annotate --out`) with the key and writes one file per system with the original
ids: `miti score` and `miti agree` (against the automatic codes) read them as they are.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue, Turn, Utterance, read_dialogues, write_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import iter_jsonl, write_json

KEY_FORMAT = "mi-llm-blind-key/1"


def _stripped(d: Dialogue, blind_id: str) -> Dialogue:
    """The dialogue under its blind id: no meta, no codes (the split kept), no talk types,
    no global ratings."""

    def turn(t: Turn) -> Turn:
        codes = [Utterance(text=u.text) for u in t.codes] if t.codes is not None else None
        return Turn(role=t.role, text=t.text, codes=codes)

    return Dialogue(
        id=blind_id, source="blind", language=d.language, topic=d.topic, style="mi", turns=[turn(t) for t in d.turns]
    )


def blind_sample(
    systems: Mapping[str, list[Dialogue]], dialogues: int | None = None, seed: int = 0
) -> tuple[list[Dialogue], dict[str, Any]]:
    """(blinded sessions in random order, key). `dialogues`: how many dialogues per system
    (all when None); drawn from the ids every system has when they share any (paired), else
    from each system's own."""
    if len(systems) < 1:
        raise MiLlmError("give at least one system's sessions")
    empty = [name for name, ds in systems.items() if not ds]
    if empty:
        raise MiLlmError(f"no sessions for {', '.join(empty)}")
    if dialogues is not None and dialogues < 1:
        raise MiLlmError(f"--dialogues must be at least 1 (got {dialogues})")
    rng = random.Random(seed)
    common = set.intersection(*({d.id for d in ds} for ds in systems.values()))
    paired = bool(common) and len(systems) > 1
    if paired:
        ids = sorted(common)
        chosen_common = set(rng.sample(ids, min(dialogues, len(ids)) if dialogues else len(ids)))
    picked: list[tuple[str, Dialogue]] = []
    for name, ds in systems.items():
        if paired:
            picked += [(name, d) for d in ds if d.id in chosen_common]
        else:
            order = sorted(ds, key=lambda d: d.id)
            picked += [(name, d) for d in rng.sample(order, min(dialogues, len(order)) if dialogues else len(order))]
    rng.shuffle(picked)
    # random, not sequential, ids: the order of the file says nothing either
    numbers = rng.sample(range(10_000, 100_000), len(picked))
    sessions, key = [], {}
    for (name, d), n in zip(picked, numbers):
        blind_id = f"blind-{n}"
        sessions.append(_stripped(d, blind_id))
        key[blind_id] = {"system": name, "id": d.id}
    return sessions, {
        "format": KEY_FORMAT,
        "seed": seed,
        "paired": paired,
        "systems": sorted(systems),
        "sessions": key,
    }


def read_key(path: str | Path) -> dict[str, dict[str, str]]:
    """The key's sessions (blind id -> {system, id}); a file that is not a key is an error."""
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MiLlmError(f"{path}: cannot read the blinding key ({e})") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not isinstance(key.get("sessions"), dict):
        raise MiLlmError(f"{path}: not a blinding key from `mi-llm miti blind` (format {KEY_FORMAT})")
    return key["sessions"]


def unblind(coded: str | Path, key_path: str | Path) -> dict[str, list[Dialogue]]:
    """The coded blind sessions per system, under their original ids (`meta.system` and
    `meta.blind_id` added)."""
    key = read_key(key_path)
    out: dict[str, list[Dialogue]] = {}
    for d in read_dialogues(coded):
        entry = key.get(d.id)
        if entry is None:  # the file is read again only to name the line
            line = next((n for n, obj in iter_jsonl(coded) if isinstance(obj, dict) and obj.get("id") == d.id), None)
            raise InputError(coded, f"session id {d.id!r} is not in the key {key_path}", line)
        restored = d.model_copy(
            update={"id": entry["id"], "meta": {**d.meta, "system": entry["system"], "blind_id": d.id}}
        )
        out.setdefault(entry["system"], []).append(restored)
    return out


def system_file_name(system: str) -> str:
    """A file name for a system's sessions (`miti/` uses the same: spaces and slashes as _)."""
    return re.sub(r"[\s/\\]+", "_", system.strip()) + ".jsonl"


def write_blind(folder: str | Path, sessions: list[Dialogue], key: dict[str, Any]) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sessions_path, key_path = folder / "sessions.jsonl", folder / "key.json"
    write_dialogues(sessions_path, sessions)
    write_json(key_path, key)
    return sessions_path, key_path


def write_unblinded(folder: str | Path, per_system: Mapping[str, list[Dialogue]]) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for system, ds in sorted(per_system.items()):
        path = folder / system_file_name(system)
        write_dialogues(path, sorted(ds, key=lambda d: d.id))
        paths.append(path)
    return paths
