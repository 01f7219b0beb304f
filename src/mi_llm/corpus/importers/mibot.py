"""MIBot v6.3A: smoking-cessation sessions between human smokers and a GPT-4o MI counsellor.

Layout: `transcripts/<participant_id>.json` = {participant_id, utterances: [{speaker,
volley_number, utterance_number, text, auto_misc_label, auto_misc_explanation,
word_count}], stats}, plus `data.csv` (surveys, one row per participant).

A turn is a *volley* ("an uninterrupted utterance or sequence of utterances by one party,
before another party speaks"): its utterances are joined with spaces and listed in
meta["utterances"] with their utterance_number and AutoMISC label (LLM-assigned: R, Q,
MICO, MIIN, Other; client C, S, N). The LLM's explanations are not kept. The path may be
the release folder, its transcripts folder or one transcript; when data.csv is found
beside the transcripts, the participant's row goes to meta["survey"].
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import (
    IMPORTERS,
    SeenIds,
    array_item_line,
    find_files,
    json_type,
    line_of,
    read_text,
)
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError
from mi_llm.io import NESTED_TOO_DEEPLY, check_json_text, too_deep_line

SOURCE = "mibot"
_ROLES = {"counsellor": "counselor", "counselor": "counselor", "client": "client"}


@IMPORTERS.register("mibot")
def import_path(path: Path) -> Iterator[Dialogue]:
    if path.is_dir() and (path / "transcripts").is_dir():
        path = path / "transcripts"
    base = path.parent if path.is_dir() else path.parent.parent
    surveys = read_surveys(base / "data.csv") if (base / "data.csv").is_file() else {}
    seen = SeenIds()
    for f in find_files(path, ["*.json"], "MIBot transcript JSON files"):
        d = parse_file(f)
        seen.add(d.id, f, None)  # the participant id comes from the file's content
        survey = surveys.get(d.meta["participant_id"])
        if survey is not None:
            d.meta["survey"] = survey
        yield d


def parse_file(path: Path) -> Dialogue:
    text = read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except RecursionError:
        raise InputError(path, NESTED_TOO_DEEPLY, too_deep_line(text, 1)) from None
    check_json_text(obj, text, path, 1)
    if not isinstance(obj, dict) or not isinstance(obj.get("utterances"), list):
        raise InputError(path, "expected an object with an 'utterances' list", 1)
    raw_pid = obj.get("participant_id")
    if raw_pid is not None and (isinstance(raw_pid, bool) or not isinstance(raw_pid, (str, int))):
        raise InputError(
            path,
            f"'participant_id' should be a string, got {json_type(raw_pid)}",
            line_of(text, text.find('"participant_id"')),
        )
    pid = str(raw_pid or path.stem)
    volleys: list[tuple[Any, str, list[dict[str, Any]]]] = []
    for i, u in enumerate(obj["utterances"]):
        where = f"utterances[{i}]"
        if not isinstance(u, dict):
            raise InputError(path, f"{where}: expected an object", array_item_line(text, "utterances", i))
        for key in ("speaker", "text"):
            if not isinstance(u.get(key), str):
                raise InputError(
                    path, f"{where}: missing or non-string {key!r}", array_item_line(text, "utterances", i)
                )
        role = _ROLES.get(u["speaker"].strip().lower())
        if role is None:
            raise InputError(
                path,
                f"{where}: unknown speaker {u['speaker']!r} (expected counsellor or client)",
                array_item_line(text, "utterances", i),
            )
        volley = u.get("volley_number")
        utt = {
            "utterance_number": u.get("utterance_number"),
            "volley_number": volley,
            "text": u["text"].strip(),
            "auto_misc_label": u.get("auto_misc_label"),
        }
        # A new volley starts when its number changes (or, without numbers, the speaker does).
        same = volleys and volleys[-1][1] == role and (volley is None or volleys[-1][0] == volley)
        if same:
            volleys[-1][2].append(utt)
        else:
            volleys.append((volley, role, [utt]))
    if not volleys:
        raise InputError(path, "no utterances")
    turns = [
        Turn(role=role, text=" ".join(u["text"] for u in utts if u["text"]), meta={"utterances": utts})
        for _, role, utts in volleys
    ]
    meta: dict[str, Any] = {"participant_id": pid, "file": path.name}
    if isinstance(obj.get("stats"), dict):
        meta["stats"] = obj["stats"]
    return Dialogue(
        id=f"{SOURCE}-{pid}",
        source=SOURCE,
        language="en",
        topic="smoking cessation",
        style="mi",
        turns=turns,
        meta=meta,
    )


def _value(v: str) -> Any:
    v = v.strip()
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def read_surveys(path: Path) -> dict[str, dict[str, Any]]:
    """data.csv rows by participant id, values typed (numbers, booleans, text)."""
    out: dict[str, dict[str, Any]] = {}
    # Decoded up front so that a bad byte is located by its line (read_text does that).
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        key = next((k for k in reader.fieldnames or [] if k.lower() == "participantid"), None)
        if key is None:
            raise InputError(path, "missing column ParticipantID", 1)
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise InputError(path, "row has a different number of fields than the header", reader.line_num)
            pid = row[key].strip()
            if pid in out:
                raise InputError(path, f"participant {pid!r} has a second row", reader.line_num)
            out[pid] = {k: _value(v) for k, v in row.items() if k != key}
    except csv.Error as e:
        raise InputError(path, f"bad CSV: {e}", reader.line_num or 1) from None
    return out
