"""Where `--personas` takes its cards from: `demo` (or `demo:zh`, `demo:en`: the bundled
cards), a card JSONL file, or a `.json` file holding a list of PatientHub profiles
(ConsistentMI, ClientCAST or SimPatient: imported). Every card is checked before a session runs."""

from __future__ import annotations

from pathlib import Path

from mi_llm.errors import MiLlmError
from mi_llm.simulate.patienthub import read_patienthub
from mi_llm.simulate.persona import PersonaCard, bundled_persona_files, read_cards


def load_personas(spec: str | Path) -> list[PersonaCard]:
    """`demo`, `demo:zh`, `demo:en`, a card JSONL file, or a PatientHub .json file."""
    s = str(spec)
    if s == "demo" or s.startswith("demo:"):
        language = s.partition(":")[2] or None
        if language not in (None, "zh", "en"):
            raise MiLlmError(f"--personas {s}: use demo, demo:zh or demo:en")
        return [c for f in bundled_persona_files(language) for c in read_cards(f)]
    path = Path(s).expanduser()
    if not path.is_file():
        raise MiLlmError(f"{path}: no such file")
    if path.suffix == ".json" and _is_json_list(path):
        return read_patienthub(path)
    return read_cards(path)


def _is_json_list(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")
