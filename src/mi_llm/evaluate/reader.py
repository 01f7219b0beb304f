"""Reading prediction files: ours (`predictions.jsonl`) or LLaMA-Factory's.

Formats, detected from the first record:
- mi-llm: `{"sample_id", "prediction", "reference", ...}`, optionally `language`,
  `generation` (the decoding settings), `backend`, `model`.
- LLaMA-Factory: `generated_predictions.jsonl`, `{"prompt", "predict", "label"}`.

Generation settings are kept when the file records them: per line under `generation`, in
a first line that holds settings but no pair (`{"generation": {...}, ...}`), or in a
sidecar `<file>.meta.json` (or `<stem>.meta.json`) beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_llm.errors import InputError
from mi_llm.evaluate.extended import LANGUAGES
from mi_llm.io import NESTED_TOO_DEEPLY, check_json_text, iter_jsonl, too_deep_line
from mi_llm.layout import META_SUFFIX, meta_file

log = logging.getLogger(__name__)

FORMATS = {
    "mi-llm": ("prediction", "reference"),
    "llamafactory": ("predict", "label"),
}
_HEADER_KEYS = {"generation", "settings", "meta", "model", "backend", "seed"}
_RUN_KEYS = ("model", "backend", "adapter", "seed")


@dataclass
class PredictionFile:
    path: Path
    format: str
    predictions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    languages: list[str | None] = field(default_factory=list)
    sample_ids: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)  # distinct settings seen
    run: dict[str, list[Any]] = field(default_factory=dict)  # distinct model/backend/... seen
    header: dict[str, Any] | None = None
    sidecar: Path | None = None
    sidecar_data: dict[str, Any] | None = None
    finish_reasons: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), "format": self.format}
        if self.sidecar:
            out["sidecar"] = str(self.sidecar)
        if self.finish_reasons:  # "length" means the reply was cut at max_new_tokens
            out["finish_reasons"] = dict(sorted(self.finish_reasons.items()))
        return out

    def settings(self) -> dict[str, Any]:
        """What the file records about how the predictions were made.

        `generation` is a dict when every line used the same settings, a list when they
        differ, None when the file does not say."""
        gen: Any = None
        if self.generation:
            gen = self.generation[0] if len(self.generation) == 1 else self.generation
        elif self.header and isinstance(self.header.get("generation"), dict):
            gen = self.header["generation"]
        elif self.sidecar_data:
            gen = _sidecar_generation(self.sidecar_data)
        out: dict[str, Any] = {"generation": gen}
        for key in _RUN_KEYS:
            values = self.run.get(key)
            if not values:
                for source in (self.header, self.sidecar_data):
                    if source and source.get(key) is not None:
                        values = [source[key]]
                        break
            if values:
                out[key] = values[0] if len(values) == 1 else values
        if self.sidecar_data is not None:
            out["meta"] = self.sidecar_data
        return out

    def sample_header(self, i: int) -> dict[str, Any]:
        """Where pair `i` came from, for its per-sample line."""
        head: dict[str, Any] = {"line": self.lines[i]}
        if self.sample_ids[i] is not None:
            head["sample_id"] = self.sample_ids[i]
        return head


def _sidecar_generation(meta: dict[str, Any]) -> dict[str, Any] | None:
    # `mi-llm predict` keeps them under settings.generation; accept a top-level one too.
    settings = meta.get("settings")
    for gen in (meta.get("generation"), settings.get("generation") if isinstance(settings, dict) else None):
        if isinstance(gen, dict):
            return gen
    return None


def _detect(obj: dict[str, Any]) -> str | None:
    for name, (pred_key, ref_key) in FORMATS.items():
        if pred_key in obj or ref_key in obj:
            return name
    return None


def _text(path: Path, obj: dict[str, Any], key: str, lineno: int) -> str:
    if key not in obj:
        raise InputError(path, f"missing field '{key}'", lineno)
    value = obj[key]
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise InputError(path, f"field '{key}' must be a string, got {got}", lineno)
    return value


def _add_distinct(bucket: list[Any], value: Any) -> None:
    if value not in bucket:
        bucket.append(value)


def _find_sidecar(path: Path) -> Path | None:
    for candidate in (meta_file(path), path.with_name(path.stem + META_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            path, f"not valid UTF-8 ({e.reason} at byte {e.start})", raw[: e.start].count(b"\n") + 1
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from None
    except RecursionError:
        raise InputError(path, NESTED_TOO_DEEPLY, too_deep_line(text, 1)) from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got {type(data).__name__}", 1)
    check_json_text(data, text, path, 1)
    return data


def read_predictions(path: str | Path) -> PredictionFile:
    """Read every pair of a predictions file; bad lines raise a located InputError."""
    path = Path(path)
    data: PredictionFile | None = None
    header: dict[str, Any] | None = None
    for lineno, obj in iter_jsonl(path):
        if data is None:
            fmt = _detect(obj)
            if fmt is None:
                if header is not None or not (_HEADER_KEYS & obj.keys()):
                    raise InputError(
                        path,
                        "missing field 'prediction' (expected 'prediction'/'reference', or 'predict'/'label')",
                        lineno,
                    )
                header = obj  # a first line with settings only
                continue
            data = PredictionFile(path=path, format=fmt, header=header)
        pred_key, ref_key = FORMATS[data.format]
        data.predictions.append(_text(path, obj, pred_key, lineno))
        data.references.append(_text(path, obj, ref_key, lineno))
        data.lines.append(lineno)
        data.sample_ids.append(obj.get("sample_id", obj.get("id")))
        lang = obj.get("language")
        if lang is not None and lang not in LANGUAGES:
            raise InputError(path, f"field 'language' must be one of {', '.join(LANGUAGES)}, got {lang!r}", lineno)
        data.languages.append(lang)
        gen = obj.get("generation")
        if gen is not None:
            if not isinstance(gen, dict):
                raise InputError(path, f"field 'generation' must be an object, got {type(gen).__name__}", lineno)
            _add_distinct(data.generation, gen)
        reason = obj.get("finish_reason")
        if isinstance(reason, str):
            data.finish_reasons[reason] = data.finish_reasons.get(reason, 0) + 1
        for key in _RUN_KEYS:
            if obj.get(key) is not None:
                _add_distinct(data.run.setdefault(key, []), obj[key])
    if data is None:
        raise InputError(path, "no prediction/reference pairs in the file")
    sidecar = _find_sidecar(path)
    if sidecar is not None:
        data.sidecar = sidecar
        data.sidecar_data = _read_sidecar(sidecar)
    if data.sidecar_data and data.sidecar_data.get("complete") is False:
        log.warning("%s says the prediction run did not finish", data.sidecar)
    if len(data.generation) > 1:
        log.warning("%s: %d different generation settings across lines", path, len(data.generation))
    return data
