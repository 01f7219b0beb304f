"""ShareGPT / LLaMA-Factory chat data: JSON array or JSONL of conversation records.

Default record: {"conversations": [{"from": "human"|"gpt"|"system", "value": …}], "system"?}.
Also accepted: LLaMA-Factory's OpenAI-like variant {"messages": [{"role": "user"|"assistant"|
"system", "content": …}]}. human/user -> client, gpt/assistant -> counselor, system -> meta.

A folder is read through its `dataset_info.json` when it has one (LLaMA-Factory's dataset
registry: every sharegpt dataset there is imported with its `columns` and `tags`), else
every *.json / *.jsonl file in it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mi_llm.corpus.importers._common import (
    IMPORTERS,
    SeenIds,
    chat_dialogue,
    find_files,
    iter_json_object,
    iter_records,
    json_type,
    read_text,
)
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError
from mi_llm.layout import DATASET_INFO, EXPORT_META

SOURCE = "sharegpt"
_SKIP = {DATASET_INFO, EXPORT_META}


class Spec:
    """Where the messages are and what the speakers are called (LLaMA-Factory's names)."""

    def __init__(self, columns: dict[str, str] | None = None, tags: dict[str, str] | None = None):
        columns, tags = columns or {}, tags or {}
        self.messages = columns.get("messages")
        self.system = columns.get("system", "system")
        self.role_tag = tags.get("role_tag")
        self.content_tag = tags.get("content_tag")
        self.user = {tags["user_tag"]} if "user_tag" in tags else {"human", "user"}
        self.assistant = {tags["assistant_tag"]} if "assistant_tag" in tags else {"gpt", "assistant"}
        self.system_tag = {tags["system_tag"]} if "system_tag" in tags else {"system"}


def _mapping(entry: dict[str, Any], key: str, path: Path, line: int, name: str) -> dict[str, str] | None:
    """`columns` / `tags` of a dataset: an object of strings (a key or a speaker name), or absent."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(path, f"dataset {name!r}: {key!r} should be an object, got {json_type(value)}", line)
    for k, v in value.items():
        if not isinstance(v, str):
            raise InputError(path, f"dataset {name!r}: {key}[{k!r}] should be a string, got {json_type(v)}", line)
    return value


@IMPORTERS.register("sharegpt", "llamafactory")
def import_path(path: Path) -> Iterator[Dialogue]:
    seen = SeenIds()
    if path.is_dir() and (path / DATASET_INFO).is_file():
        for f, spec in _registered(path):
            yield from parse_file(f, spec, seen)
        return
    files = [f for f in find_files(path, ["*.json", "*.jsonl"], "sharegpt JSON/JSONL files") if f.name not in _SKIP]
    for f in files:
        yield from parse_file(f, Spec(), seen)


def _registered(folder: Path) -> list[tuple[Path, Spec]]:
    info_path = folder / DATASET_INFO
    text = read_text(info_path)
    out = []
    for line, name, entry in iter_json_object(info_path, text):
        if not isinstance(entry, dict):
            raise InputError(info_path, f"dataset {name!r}: expected an object, got {json_type(entry)}", line)
        if "file_name" not in entry:
            raise InputError(info_path, f"dataset {name!r}: missing 'file_name'", line)
        file_name = entry["file_name"]
        if not isinstance(file_name, str) or not file_name.strip():
            raise InputError(
                info_path, f"dataset {name!r}: 'file_name' should be a file name, got {json_type(file_name)}", line
            )
        if entry.get("formatting", "alpaca") != "sharegpt":
            raise InputError(info_path, f"dataset {name!r} is not in sharegpt format; only sharegpt is imported", line)
        spec = Spec(_mapping(entry, "columns", info_path, line, name), _mapping(entry, "tags", info_path, line, name))
        f = folder / file_name
        try:
            found = f.is_file()
        except OSError:  # a name too long for the file system is not a file either
            found = False
        if not found:
            # repr: the name comes from the file and may hold a newline
            raise InputError(info_path, f"dataset {name!r}: no file {file_name!r} in {folder}", line)
        out.append((f, spec))
    return out


def parse_file(path: Path, spec: Spec, seen: SeenIds | None = None) -> Iterator[Dialogue]:
    seen = seen if seen is not None else SeenIds()
    for index, (line, rec) in enumerate(iter_records(path), start=1):
        d = parse_record(rec, path, line, index, spec)
        seen.add(d.id, path, line)
        yield d


def parse_record(rec: dict[str, Any], path: Path, line: int, index: int, spec: Spec) -> Dialogue:
    key = spec.messages or next((k for k in ("conversations", "messages") if k in rec), None)
    if key is None or key not in rec:
        raise InputError(path, f"missing key {key or 'conversations'!r} (a list of messages)", line)
    messages = rec[key]
    first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
    role_key = spec.role_tag or ("from" if "from" in first else "role")
    content_key = spec.content_tag or ("value" if role_key == "from" else "content")
    roles = {**{u: "client" for u in spec.user}, **{a: "counselor" for a in spec.assistant}}
    return chat_dialogue(
        SOURCE, path, line, index, rec, messages, role_key, content_key, roles, spec.system_tag, rec.get(spec.system)
    )
