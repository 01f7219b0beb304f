"""Checkpoint folders: `DIR/checkpoints/step-000050/` holds the adapter, optimizer,
scheduler, RNG states (accelerate's `save_state`) and `trainer_state.json`.

A checkpoint is written under a temporary name and renamed when complete, so a kill
during the save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoints_dir(output: Path) -> Path:
    return output / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their state file), oldest first."""
    d = checkpoints_dir(output)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    cps = list_checkpoints(output)
    return cps[-1][1] if cps else None


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MiLlmError(f"{ckpt / STATE_FILE}: unreadable checkpoint state ({e})") from None


def prune(output: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; also clear leftovers of interrupted saves."""
    d = checkpoints_dir(output)
    for _, p in list_checkpoints(output)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    if d.is_dir():
        for p in d.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
