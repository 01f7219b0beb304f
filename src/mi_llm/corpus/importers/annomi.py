"""AnnoMI: expert-annotated transcripts of MI demonstrations (English), simple or full CSV.

`AnnoMI-simple.csv` has one row per utterance; `AnnoMI-full.csv` one row per utterance
per annotator (some utterances are coded by several annotators). The version is told by
the columns. The path may be a CSV file or a folder holding them (the full one preferred).

Mapping: one dialogue per transcript_id, one turn per utterance in utterance_id order,
therapist -> counselor. High-quality MI transcripts get style "mi", low-quality "raw".
Every turn carries meta["utterances"], a list of {utterance_id, timestamp, text,
annotations: [{annotator_id?, main_therapist_behaviour, ... | client_talk_type}]} (one
text per utterance, every annotator's labels; "n/a" labels are left out): normalisation concatenates
these lists when it merges consecutive turns, so each utterance keeps its own labels.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import IMPORTERS, read_text
from mi_llm.corpus.schema import Dialogue, Turn
from mi_llm.errors import InputError, MiLlmError

log = logging.getLogger(__name__)

SOURCE = "annomi"
_BASE = ("transcript_id", "mi_quality", "topic", "utterance_id", "interlocutor", "utterance_text")
_SIMPLE_LABELS = ("main_therapist_behaviour", "client_talk_type")
_FULL_EXTRA = ("annotator_id", "reflection_subtype", "question_subtype", "therapist_input_subtype")
_THERAPIST_LABELS = ("main_therapist_behaviour", "reflection_subtype", "question_subtype", "therapist_input_subtype")
_ROLES = {"therapist": "counselor", "client": "client"}
_QUALITY = {"high": "mi", "low": "raw"}


@IMPORTERS.register("annomi")
def import_path(path: Path) -> Iterator[Dialogue]:
    yield from parse_csv(_pick_file(path))


def _pick_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("AnnoMI-full.csv", "AnnoMI-simple.csv"):
        if (path / name).is_file():
            return path / name
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0]
    raise MiLlmError(f"{path}: no AnnoMI-full.csv or AnnoMI-simple.csv in this folder")


def _na(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "n/a", "N/A", "nan") else value


def _int(value: str, column: str, path: Path, line: int) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InputError(path, f"{column} should be an integer, got {value!r}", line) from None


def parse_csv(path: Path) -> Iterator[Dialogue]:
    rows = list(_read_rows(path))
    full = bool(rows) and "annotator_id" in rows[0][1]
    # transcript -> utterance id -> (first line, first row, every row)
    transcripts: dict[int, dict[int, list[tuple[int, dict[str, str]]]]] = defaultdict(lambda: defaultdict(list))
    for line, row in rows:
        tid = _int(row["transcript_id"], "transcript_id", path, line)
        uid = _int(row["utterance_id"], "utterance_id", path, line)
        if row["interlocutor"].strip() not in _ROLES:
            raise InputError(path, f"unknown interlocutor {row['interlocutor']!r} (expected therapist or client)", line)
        if row["mi_quality"].strip() not in _QUALITY:
            raise InputError(path, f"mi_quality should be high or low, got {row['mi_quality']!r}", line)
        transcripts[tid][uid].append((line, row))
    for tid in sorted(transcripts):
        yield _dialogue(path, tid, transcripts[tid], full)


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    # Decoded up front so that a bad byte is located by its line (read_text does that).
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InputError(path, "empty file", 1) from None
        missing = [c for c in (*_BASE, *_SIMPLE_LABELS) if c not in header]
        if "annotator_id" in header:
            missing += [c for c in _FULL_EXTRA if c not in header]
        if missing:
            raise InputError(path, f"not an AnnoMI CSV: missing column(s) {', '.join(missing)}", 1)
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise InputError(path, f"{len(values)} fields, the header has {len(header)}", line)
            yield line, dict(zip(header, values))
    except csv.Error as e:
        raise InputError(path, f"bad CSV: {e}", reader.line_num or 1) from None


def _labels(row: dict[str, str], role: str, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if full:
        # isdecimal, not isdigit: int() refuses digits such as '²' that isdigit accepts
        out["annotator_id"] = (
            int(row["annotator_id"]) if row["annotator_id"].strip().isdecimal() else _na(row["annotator_id"])
        )
    if role == "counselor":
        for col in _THERAPIST_LABELS if full else ("main_therapist_behaviour",):
            out[col] = _na(row[col])
    else:
        out["client_talk_type"] = _na(row["client_talk_type"])
    # "n/a" labels are left out: an absent key means "not applicable".
    return {k: v for k, v in out.items() if v is not None}


def _dialogue(path: Path, tid: int, utterances: dict[int, list[tuple[int, dict[str, str]]]], full: bool) -> Dialogue:
    turns: list[Turn] = []
    first_line, first = utterances[min(utterances)][0]
    for uid in sorted(utterances):
        rows = utterances[uid]
        line, row = rows[0]
        role = _ROLES[row["interlocutor"].strip()]
        for other_line, other in rows[1:]:
            if _ROLES[other["interlocutor"].strip()] != role:
                raise InputError(
                    path, f"transcript {tid} utterance {uid}: interlocutor differs from line {line}", other_line
                )
            if other["utterance_text"].strip() != row["utterance_text"].strip():
                log.warning(
                    "%s:%d: annotators' texts of one utterance differ; keeping line %d's", path, other_line, line
                )
        text = row["utterance_text"]
        utt = {
            "utterance_id": uid,
            "timestamp": _na(row.get("timestamp")),
            "text": text.strip(),
            "annotations": [_labels(r, role, full) for _, r in rows],
        }
        turns.append(Turn(role=role, text=text, meta={"utterances": [utt]}))
    quality = first["mi_quality"].strip()
    topic = _na(first["topic"])
    return Dialogue(
        id=f"{SOURCE}-{tid}",
        source=SOURCE,
        language="en",
        topic=topic,
        style=_QUALITY[quality],
        turns=turns,
        meta={
            "transcript_id": tid,
            "mi_quality": quality,
            "topic": topic,
            "video_title": _na(first.get("video_title")),
            "video_url": _na(first.get("video_url")),
            "annotation_file": "full" if full else "simple",
            "line": first_line,
        },
    )
