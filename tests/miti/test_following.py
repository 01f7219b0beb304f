"""Code-following: how often the coder hears the code a reply was asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError
from mi_llm.io import write_jsonl
from mi_llm.miti.coders.base import Coder, Result
from mi_llm.miti.following import code_following, evaluate_following, following_of_predictions, heard_by_round


def test_code_following_counts() -> None:
    out = code_following([("CR", ["CR", "Q"]), ("CR", ["SR"]), ("CR", ["Q", "CR", "Persuade"]), ("Q", [None, "Q"])])
    cr = out["by_code"]["CR"]
    # one code of the reply: CR, SR, Persuade (which outranks CR); CR in some utterance: 2 of 3
    assert (cr["asked"], cr["followed"], cr["present"]) == (3, 1, 2)
    assert cr["rate"] == pytest.approx(1 / 3) and cr["present_rate"] == pytest.approx(2 / 3)
    assert out["heard"]["CR"] == {"CR": 1, "SR": 1, "Persuade": 1}
    assert out["all"]["asked"] == 4 and out["all"]["followed"] == 2
    assert code_following([])["all"]["rate"] is None


def test_following_from_coded_sessions() -> None:
    d = Dialogue.model_validate(
        {
            "id": "d",
            "source": "t",
            "language": "en",
            "turns": [
                {"role": "client", "text": "c1"},
                {"role": "counselor", "text": "You feel it.", "codes": [{"text": "You feel it.", "code": "CR"}]},
                {"role": "client", "text": "c2"},
                {"role": "counselor", "text": "Why?", "codes": [{"text": "Why?", "code": "Q"}]},
            ],
        }
    )
    heard = heard_by_round([d])
    recs = [
        {"dialogue_id": "d", "round": 1, "code": "CR", "strategy": "CR"},
        {"dialogue_id": "d", "round": 2, "code": "CR", "strategy": "CR"},
        {"dialogue_id": "e", "round": 1, "code": "CR", "strategy": "CR"},
    ]
    out = following_of_predictions(recs, heard)
    assert out["by_code"]["CR"]["followed"] == 1 and out["uncoded"] == 1 and out["strategy"] == "CR"


class KeywordCoder(Coder):
    """Hears a question where an utterance ends with '?', else a complex reflection; keeps the contexts."""

    name = "keyword"

    def __init__(self) -> None:
        self.contexts: list[str] = []

    def code_items(self, items, progress=None):
        self.contexts += [i.context for i in items]
        return [Result("Q" if i.text.rstrip().endswith("?") else "CR") for i in items]


def test_evaluate_following_codes_the_replies(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    rows = [
        {
            "sample_id": "d#1",
            "dialogue_id": "d",
            "round": 1,
            "language": "en",
            "prediction": "You feel torn.",
            "code": "CR",
        },
        {"sample_id": "d#2", "dialogue_id": "d", "round": 2, "language": "en", "prediction": "What now?", "code": "CR"},
    ]
    write_jsonl(preds, [{**r, "strategy": "CR", "requested": "CR", "reference": "x"} for r in rows])
    coder = KeywordCoder()
    out = evaluate_following(preds, tmp_path / "f.json", coder)
    assert out["by_code"]["CR"]["rate"] == 0.5 and out["coder"] == "keyword"
    assert json.loads((tmp_path / "f.json").read_text())["heard"]["CR"] == {"CR": 1, "Q": 1}
    plain = tmp_path / "plain.jsonl"
    write_jsonl(plain, [{k: v for k, v in r.items() if k != "code"} for r in rows])
    with pytest.raises(InputError, match="--strategy"):
        evaluate_following(plain, tmp_path / "g.json", coder)
