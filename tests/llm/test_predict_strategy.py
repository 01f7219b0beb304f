"""`predict --strategy`: the tag cut from each prediction and stored with it; forced codes
begun as the assistant's turn; the policy fed the codes of the history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.build.samples import dialogue_samples
from mi_llm.build.strategy import Strategy
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError
from mi_llm.evaluate.predict import predict
from mi_llm.io import write_jsonl
from mi_llm.llm.backends import preset
from mi_llm.llm.backends.base import Backend, Completion


class Scripted(Backend):
    """Answers every conversation with `reply`; keeps the conversations it was given."""

    name = "scripted"

    def __init__(self, reply: str):
        self.reply, self.seen = reply, []

    def generate(self, batch, config) -> list[Completion]:
        self.seen += list(batch)
        return [Completion(self.reply, 10, 5, "stop") for _ in batch]


@pytest.fixture
def coded_test_set(tmp_path: Path) -> Path:
    turns = []
    for t, code in enumerate(["Q", "CR", "CR", "Q"]):
        turns += [
            {"role": "client", "text": f"client {t}"},
            {"role": "counselor", "text": f"reply {t}.", "codes": [{"text": f"reply {t}.", "code": code}]},
        ]
    d = Dialogue.model_validate({"id": "d", "source": "t", "language": "en", "turns": turns})
    path = tmp_path / "samples.test.jsonl"
    write_jsonl(path, dialogue_samples(d, "SYS", codes=True, strategy=True))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_model_strategy_cuts_and_stores_the_tag(coded_test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    be = Scripted("[SR] You are torn.")
    predict(be, coded_test_set, out, preset("greedy"), strategy=Strategy.parse("model"))
    recs = records(out)
    assert all(r["prediction"] == "You are torn." and r["code"] == "SR" and r["requested"] is None for r in recs)
    assert recs[1]["reference"] == "reply 1."  # the reference carries no tag
    assert all(m[-1]["role"] == "user" for m in be.seen)  # nothing forced
    meta = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    assert meta["settings"]["strategy"] == {"spec": "model", "policy": None}


def test_forced_code_begins_the_assistant_turn(coded_test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    be = Scripted(" It feels heavy.")
    predict(be, coded_test_set, out, preset("greedy"), strategy=Strategy.parse("CR"))
    assert all(m[-1] == {"role": "assistant", "content": "[CR]"} for m in be.seen)
    assert all(r["prediction"] == "It feels heavy." and r["code"] == r["requested"] == "CR" for r in records(out))


def test_policy_reads_the_history_codes(coded_test_set: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("opening: Q\nreflections_per_question: 2\nreflection: CR\n")
    out = tmp_path / "p.jsonl"
    predict(Scripted("Go on."), coded_test_set, out, preset("greedy"), strategy=Strategy.parse(f"policy:{policy}"))
    # history codes per round: [], [Q], [Q, CR], [Q, CR, CR]
    assert [r["requested"] for r in records(out)] == ["Q", "CR", "CR", "Q"]


def test_a_policy_needs_coded_samples(test_set: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("opening: Q\n")
    with pytest.raises(MiLlmError, match="--codes"):
        predict(
            Scripted("x"), test_set, tmp_path / "p.jsonl", preset("greedy"), strategy=Strategy.parse(f"policy:{policy}")
        )


def test_resume_refuses_another_strategy(coded_test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    predict(Scripted("[SR] a"), coded_test_set, out, preset("greedy"), strategy=Strategy.parse("model"), limit=2)
    with pytest.raises(MiLlmError, match="strategy"):
        predict(Scripted("a"), coded_test_set, out, preset("greedy"), strategy=Strategy.parse("CR"))


def test_prefill_prompt_goes_on_from_the_tag(hf_backend) -> None:
    from mi_llm.llm.templates import encode_prompt, render_prompt

    tok = hf_backend.tokenizer
    msgs = [{"role": "user", "content": "I smoke."}]
    ids = encode_prompt(tok, [*msgs, {"role": "assistant", "content": "[CR]"}])
    text = render_prompt(tok, msgs, add_generation_prompt=True) + "[CR]"
    assert ids == list(tok(text, add_special_tokens=False)["input_ids"])
    # the hf backend generates after the tag (greedy: same as its own prompt ids)
    [c] = hf_backend.generate([[*msgs, {"role": "assistant", "content": "[CR]"}]], preset("greedy", max_new_tokens=3))
    assert c.prompt_tokens == len(ids)
