import json

import pytest

from mi_llm.build.samples import build_samples, dialogue_samples, split_dialogues
from mi_llm.build.stage import build
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError


def make_dialogue(i: str, rounds: int, trailing_client: bool = False, language: str = "en") -> Dialogue:
    turns = []
    for t in range(rounds):
        turns += [{"role": "client", "text": f"c{t}-{i}"}, {"role": "counselor", "text": f"r{t}-{i}"}]
    if trailing_client:
        turns.append({"role": "client", "text": "bye"})
    return Dialogue.model_validate({"id": i, "source": "t", "language": language, "turns": turns})


def test_samples_follow_paper_definition():
    d = make_dialogue("x", 3, trailing_client=True)
    samples = dialogue_samples(d, "SYS")
    assert len(samples) == 3  # the trailing client turn makes no sample
    s = samples[2]
    assert s.round == 3 and s.query == "c2-x" and s.response == "r2-x"
    assert s.history == [("c0-x", "r0-x"), ("c1-x", "r1-x")]
    assert [m["role"] for m in s.messages(with_response=True)] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert s.messages()[-1] == {"role": "user", "content": "c2-x"}


def test_history_budget_keeps_most_recent_rounds():
    d = make_dialogue("x", 4)
    # each history round costs len("cN-x") + len("rN-x") = 8 characters
    s = dialogue_samples(d, "SYS", history_budget=17)[3]
    assert s.history == [("c1-x", "r1-x"), ("c2-x", "r2-x")]
    assert s.truncated_rounds == 1
    assert dialogue_samples(d, "SYS", history_budget=0)[3].history == []


def test_sample_count_equals_answered_counselor_turns():
    ds = [make_dialogue(str(i), i % 5 + 1, trailing_client=i % 2 == 0) for i in range(30)]
    assert len(build_samples(ds)) == sum(i % 5 + 1 for i in range(30))


def test_split_deterministic_disjoint_and_capped():
    ds = [make_dialogue(f"d{i}", 2) for i in range(100)]
    a = split_dialogues(ds, train=50, test=10, seed=1)
    b = split_dialogues(list(reversed(ds)), train=50, test=10, seed=1)
    assert [d.id for d in a.train] == [d.id for d in b.train]
    assert {d.id for d in a.train}.isdisjoint({d.id for d in a.test})
    assert len(a.test) == 10 and len(a.train) == 50 and a.unused == 40
    c = split_dialogues(ds, train=2000, test=40, seed=1)
    assert len(c.test) == 40 and len(c.train) == 60 and c.unused == 0
    f = split_dialogues(ds, train=0.5, test=0.1, seed=1)
    assert len(f.test) == 10 and len(f.train) == 45
    assert split_dialogues(ds, seed=2).test != c.test
    with pytest.raises(MiLlmError):
        split_dialogues(ds, train=2.5)


def test_build_writes_samples_and_exports(tmp_path):
    src = tmp_path / "d.jsonl"
    ds = [make_dialogue(f"d{i}", 3, language="zh" if i % 2 else "en") for i in range(12)]
    src.write_text("".join(d.model_dump_json() + "\n" for d in ds))
    out = tmp_path / "out"
    summary = build([src], out, train=8, test=2, seed=3)
    assert summary["train"]["samples"] == 24 and summary["test"]["samples"] == 6
    train_lines = (out / "samples.train.jsonl").read_text().splitlines()
    assert len(train_lines) == 24
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info["mi_train"]["formatting"] == "sharegpt"
    records = json.loads((out / "llamafactory" / "mi_train.json").read_text())
    assert len(records) == 24 and records[0]["system"]
    assert records[0]["conversations"][0]["from"] == "human"
    # the sharegpt record round-trips to the sample: history + query + response
    first = json.loads(train_lines[0])
    conv = records[0]["conversations"]
    assert conv[-1]["value"] == first["response"] and conv[-2]["value"] == first["query"]
    oa = [json.loads(x) for x in (out / "openai" / "train.jsonl").read_text().splitlines()]
    last_round = next(r for r in oa if len(r["messages"]) == 7)
    weights = [m.get("weight", 1) for m in last_round["messages"] if m["role"] == "assistant"]
    assert weights == [0, 0, 1]


def test_build_dialogue_mode_one_record_per_dialogue(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(make_dialogue(f"d{i}", 3).model_dump_json() + "\n" for i in range(6)))
    build([src], tmp_path / "o", train=4, test=2, export_mode="dialogues")
    records = json.loads((tmp_path / "o" / "llamafactory" / "mi_train.json").read_text())
    assert len(records) == 4 and all(len(r["conversations"]) == 6 for r in records)
