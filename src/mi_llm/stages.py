"""Up-to-date checks for pipeline stages: a stage is skipped when its outputs exist and
its fingerprint (settings + content of its inputs) matches the one recorded last time."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.io import write_json
from mi_llm.layout import RunPaths

log = logging.getLogger(__name__)


def _hash_path(hashers: Sequence[hashlib._Hash], path: Path) -> None:
    """Feed the path's content (a folder's files, by relative name) to every hasher: one read."""
    if path.is_dir():
        for p in sorted(x for x in path.rglob("*") if x.is_file()):
            for h in hashers:
                h.update(str(p.relative_to(path)).encode())
            _hash_path(hashers, p)
    elif path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                for h in hashers:
                    h.update(chunk)
    else:
        for h in hashers:
            h.update(b"<missing>")


def fingerprints(params: Any, inputs: Sequence[Path], root: Path | None = None) -> tuple[str, str]:
    """(fingerprint with inputs under `root` named relative to it, fingerprint with every input
    named as given: how stages were recorded before), the inputs read once for both."""
    head = json.dumps(params, sort_keys=True, default=str).encode()
    relative, as_given = hashlib.sha256(head), hashlib.sha256(head)
    base = Path(root).absolute() if root is not None else None
    for p in inputs:
        name = str(p)
        as_given.update(name.encode())
        if base is not None and Path(p).absolute().is_relative_to(base):
            name = "<run>/" + Path(p).absolute().relative_to(base).as_posix()
        relative.update(name.encode())
        _hash_path((relative, as_given), Path(p))
    return relative.hexdigest(), as_given.hexdigest()


def fingerprint(params: Any, inputs: Sequence[Path], root: Path | None = None) -> str:
    """Hash of the params and of each input's name and content. Inputs under `root` (the run
    directory) are named relative to it, so a run directory copied or moved elsewhere is
    still up to date."""
    return fingerprints(params, inputs, root)[0]


@dataclass
class Stage:
    name: str
    run: Callable[[], Any]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    params: Any = None


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float


class StageRunner:
    """Runs stages in order into `run_dir`, recording fingerprints in `run_dir/.stages/`."""

    def __init__(self, run_dir: Path, force: bool = False):
        self.run_dir = Path(run_dir)
        self.state_dir = RunPaths(self.run_dir).stages
        self.force = force
        self.results: list[StageResult] = []

    def _state_file(self, name: str) -> Path:
        return RunPaths(self.run_dir).stage_state(name)

    def up_to_date(self, stage: Stage, fps: tuple[str, str]) -> bool:
        """`fps`: `fingerprints` of the stage. A stage recorded before inputs were named
        relative to the run directory, in this very directory, is up to date too: upgrading
        mi-llm does not rerun a finished run."""
        state = self._state_file(stage.name)
        if self.force or not state.is_file() or not all(Path(o).exists() for o in stage.outputs):
            return False
        return json.loads(state.read_text()).get("fingerprint") in fps

    def __call__(self, stage: Stage) -> StageResult:
        fps = fingerprints(stage.params, stage.inputs, self.run_dir)
        fp = fps[0]
        if self.up_to_date(stage, fps):
            log.info("stage %s: up to date, skipped", stage.name)
            result = StageResult(stage.name, True, 0.0)
        else:
            log.info("stage %s: running", stage.name)
            t0 = time.monotonic()
            stage.run()
            seconds = time.monotonic() - t0
            missing = [str(o) for o in stage.outputs if not Path(o).exists()]
            if missing:
                raise RuntimeError(f"stage {stage.name} did not write {missing}")
            write_json(self._state_file(stage.name), {"fingerprint": fp, "seconds": round(seconds, 2)})
            log.info("stage %s: done in %.1f s", stage.name, seconds)
            result = StageResult(stage.name, False, seconds)
        self.results.append(result)
        return result
