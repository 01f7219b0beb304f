import json
import os

import pytest

from mi_llm.corpus.schema import Dialogue, Turn, read_dialogues, write_dialogues
from mi_llm.errors import InputError, MiLlmError
from mi_llm.io import atomic_writer, iter_jsonl, repair_torn_tail, write_jsonl


def _dialogue(i="d1", turns=None):
    return {
        "id": i,
        "source": "test",
        "language": "en",
        "style": "mi",
        "turns": turns
        or [
            {"role": "client", "text": "I smoke too much."},
            {
                "role": "counselor",
                "text": "You're worried about it. What worries you most?",
                "codes": [
                    {"text": "You're worried about it.", "code": "CR"},
                    {"text": "What worries you most?", "code": "Q"},
                ],
            },
        ],
    }


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_roundtrip(tmp_path):
    d = Dialogue.model_validate(_dialogue())
    p = tmp_path / "d.jsonl"
    write_dialogues(p, [d])
    assert read_dialogues(p) == [d]


def test_bad_role_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    bad = _dialogue("d2", [{"role": "therapist", "text": "hi"}])
    _write_lines(p, [json.dumps(_dialogue()), json.dumps(bad)])
    with pytest.raises(InputError) as e:
        read_dialogues(p)
    assert str(e.value).startswith(f"{p}:2: turns.0.role")


def test_invalid_json_and_non_utf8(tmp_path):
    p = tmp_path / "d.jsonl"
    _write_lines(p, [json.dumps(_dialogue()), "{not json"])
    with pytest.raises(InputError, match=r":2: invalid JSON"):
        read_dialogues(p)
    p.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(InputError, match=r":1: not valid UTF-8"):
        list(iter_jsonl(p))


def test_duplicate_ids_rejected(tmp_path):
    p = tmp_path / "d.jsonl"
    _write_lines(p, [json.dumps(_dialogue()), json.dumps(_dialogue())])
    with pytest.raises(InputError, match=r":2: dialogue id 'd1' repeats line 1"):
        read_dialogues(p)


def test_codes_must_cover_text():
    with pytest.raises(ValueError, match="do not add up"):
        Turn(role="counselor", text="One. Two.", codes=[{"text": "One.", "code": "SR"}])
    with pytest.raises(ValueError):
        Turn(role="counselor", text="One.", codes=[{"text": "One.", "code": "Reflect"}])
    with pytest.raises(ValueError, match="only counselor"):
        Turn(role="client", text="One.", codes=[{"text": "One.", "code": "SR"}])


def test_globals_range():
    d = _dialogue()
    d["miti_globals"] = {"cct": 6, "sst": 3, "partnership": 3, "empathy": 3}
    with pytest.raises(ValueError):
        Dialogue.model_validate(d)


def test_rounds_skip_opening_counselor_and_trailing_client():
    d = Dialogue.model_validate(
        _dialogue(
            turns=[
                {"role": "counselor", "text": "Welcome."},
                {"role": "client", "text": "a"},
                {"role": "counselor", "text": "b"},
                {"role": "client", "text": "c"},
            ]
        )
    )
    assert [(c.text, r.text) for c, r in d.rounds()] == [("a", "b")]


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    p = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_writer(p) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    write_jsonl(p, [{"a": 1}])
    with pytest.raises(RuntimeError):
        with atomic_writer(p) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert p.read_text() == '{"a": 1}\n'


def test_missing_file(tmp_path):
    with pytest.raises(MiLlmError, match="no such file"):
        read_dialogues(tmp_path / "nope.jsonl")


def test_torn_tail_is_cut(tmp_path):
    """The one repair of append-only JSONL files (transcribe.store and evaluate.predict resume with it)."""
    p = tmp_path / "o.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "tur')
    assert repair_torn_tail(p) == len(b'{"id": "c", "tur')
    assert p.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert repair_torn_tail(p) == 0
    p.write_bytes(b'{"id": "only-torn"')
    repair_torn_tail(p)
    assert p.read_bytes() == b""
