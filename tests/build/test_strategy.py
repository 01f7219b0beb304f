"""Strategy-then-response: the tag, a turn's code, the policy, and samples built with codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.build.samples import augment_code, dialogue_samples
from mi_llm.build.stage import build
from mi_llm.build.strategy import Strategy, StrategyPolicy, load_policy, split_tag, tagged, turn_code
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError, MiLlmError


def coded_dialogue(i: str, codes: list[list[str | None]]) -> Dialogue:
    """A dialogue whose counselor turn t is made of one utterance per code in codes[t]."""
    turns: list[dict] = []
    for t, turn_codes in enumerate(codes):
        utts = [{"text": f"u{t}.{k}-{i}.", "code": c} for k, c in enumerate(turn_codes)]
        turns += [
            {"role": "client", "text": f"c{t}-{i}"},
            {"role": "counselor", "text": " ".join(u["text"] for u in utts), "codes": utts},
        ]
    return Dialogue.model_validate({"id": i, "source": "t", "language": "en", "turns": turns})


def test_tag_round_trip() -> None:
    assert tagged("CR", "You feel stuck.") == "[CR] You feel stuck."
    assert split_tag("[CR] You feel stuck.") == ("CR", "You feel stuck.")
    assert split_tag("  [Persuade]You should.") == ("Persuade", "You should.")
    assert split_tag("[XY] no code") == (None, "[XY] no code")
    # a tag later in the text is cut too: it is a control code, never the counselor's words
    assert split_tag("It weighs on you. [CR] It is hard.") == (None, "It weighs on you. It is hard.")
    assert split_tag("[CR] 你好！[CR] 体检结果") == ("CR", "你好！体检结果")
    assert split_tag("[note] stays") == (None, "[note] stays")
    assert tagged(None, "plain") == "plain"


def test_turn_code_prefers_mi_inconsistent_then_reflections() -> None:
    assert turn_code([None, "CR", "Q"]) == "CR"
    assert turn_code(["Q", "SR"]) == "SR"
    assert turn_code(["CR", "Persuade"]) == "Persuade"  # a tag never hides persuasion
    assert turn_code(["GI", "Q"]) == "Q"
    assert turn_code([None]) is None and turn_code([]) is None


def test_samples_carry_codes_and_tagged_targets() -> None:
    d = coded_dialogue("x", [[None, "Q"], ["CR", "Q"], ["SR"], [None]])
    plain = dialogue_samples(d, "SYS")
    assert all(s.code is None and s.history_codes is None and not s.strategy for s in plain)
    assert plain[1].target == plain[1].response
    coded = dialogue_samples(d, "SYS", codes=True, strategy=True)
    assert [s.code for s in coded] == ["Q", "CR", "SR", None]
    assert coded[2].history_codes == ["Q", "CR"]
    assert coded[1].target == "[CR] " + coded[1].response
    assert coded[1].messages(with_response=True)[-1]["content"] == coded[1].target
    assert coded[3].target == coded[3].response  # no code, no tag
    # the history keeps the plain replies: served replies are stored without their tags
    assert coded[2].history[1][1] == coded[1].response
    # with a history budget, the codes of the dropped rounds go too
    cut = dialogue_samples(d, "SYS", history_budget=20, codes=True)
    assert cut[2].truncated_rounds == 1 and cut[2].history_codes == ["CR"]


def test_augment_code_duplicates_its_targets() -> None:
    d = coded_dialogue("x", [["CR"], ["Q"], ["CR", "Q"]])
    samples = augment_code(dialogue_samples(d, "SYS", codes=True), "CR", 2)
    assert [s.sample_id for s in samples] == ["x#1", "x#1+CR1", "x#1+CR2", "x#2", "x#3", "x#3+CR1", "x#3+CR2"]


def test_build_with_codes(tmp_path: Path) -> None:
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text(
        "\n".join(coded_dialogue(f"d{i}", [["Q"], ["CR"], ["SR", "Q"]]).model_dump_json() for i in range(4)) + "\n"
    )
    out = tmp_path / "b"
    summary = build([dialogues], out, train=3, test=1, codes="corpus", strategy=True, augment_cr=1)
    assert summary["train"]["codes"] == {"CR": 6, "Q": 3, "SR": 3} and summary["test"]["samples"] == 3
    rows = [json.loads(x) for x in (out / "samples.train.jsonl").read_text().splitlines()]
    assert rows[1]["code"] == "CR" and rows[1]["strategy"] is True and rows[2]["sample_id"].endswith("+CR1")
    lf = json.loads((out / "llamafactory" / "mi_train.json").read_text())
    assert lf[1]["conversations"][-1]["value"].startswith("[CR] ")
    # the default writes samples as before: no code fields
    plain = tmp_path / "p"
    build([dialogues], plain, train=3, test=1)
    assert not {"code", "history_codes", "strategy"} & set(
        json.loads((plain / "samples.train.jsonl").read_text().splitlines()[0])
    )
    with pytest.raises(MiLlmError, match="--codes"):
        build([dialogues], tmp_path / "x", train=3, test=1, strategy=True)
    with pytest.raises(MiLlmError, match="--codes must be"):
        build([dialogues], tmp_path / "x", train=3, test=1, codes="human")


def test_policy_picks_codes_from_the_session_so_far() -> None:
    p = StrategyPolicy(reflections_per_question=2)
    codes: list[str | None] = []
    for _ in range(7):
        codes.append(p.choose(codes))
    assert codes == ["Q", "CR", "CR", "Q", "CR", "CR", "Q"]
    assert StrategyPolicy(reflection="SR", reflections_per_question=1).choose(["Q"]) == "SR"
    assert StrategyPolicy(affirm_every=3).choose(["Q", "CR", "CR"]) == "AF"
    assert StrategyPolicy(affirm_every=3).choose(["AF", "CR", "CR"]) == "Q"
    # codes the corpus left uncoded do not count as reflections
    assert p.choose(["Q", None, "CR"]) == "CR"


def test_policy_file_errors_are_located(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("opening: Q\nreflections_per_question: 3\n")
    assert load_policy(good).reflections_per_question == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("opening: Q\nreflections_per_question: -1\n")
    with pytest.raises(InputError, match=r"bad.yaml:2: reflections_per_question"):
        load_policy(bad)
    persuade = tmp_path / "persuade.yaml"
    persuade.write_text("opening: Persuade\n")
    with pytest.raises(InputError, match="never picks Persuade"):
        load_policy(persuade)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("reflections: 2\n")
    with pytest.raises(InputError, match=r"unknown.yaml:1: reflections"):
        load_policy(unknown)


def test_strategy_option(tmp_path: Path) -> None:
    assert Strategy.parse("model").requested(None) is None
    forced = Strategy.parse("CR")
    assert forced.requested(None) == "CR"
    assert forced.prefill([{"role": "user", "content": "hi"}], "CR")[-1] == {"role": "assistant", "content": "[CR]"}
    with pytest.raises(MiLlmError, match="--strategy: 'XX' is not a MITI code"):
        Strategy.parse("XX")
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text("reflections_per_question: 1\n")
    policy = Strategy.parse(f"policy:{policy_file}")
    assert policy.requested(["Q"]) == "CR" and policy.requested(["Q", "CR"]) == "Q"
    with pytest.raises(MiLlmError, match="--codes corpus or auto"):
        policy.requested(None)
    with pytest.raises(MiLlmError, match="no such policy file"):
        Strategy.parse(f"policy:{tmp_path / 'missing.yaml'}")


def test_build_with_the_automatic_coder(tmp_path: Path, monkeypatch) -> None:
    """--codes auto: every counselor turn coded by the coder (its codes replace the corpus's)."""
    import mi_llm.miti.coders as coders
    from mi_llm.miti.coders.base import Coder, Result

    class AllSR(Coder):
        name = "all-sr"

        def code_items(self, items, progress=None):
            return [Result("SR") for _ in items]

    monkeypatch.setattr(coders, "load_coder", lambda spec: AllSR())
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("\n".join(coded_dialogue(f"d{i}", [["Q"], ["CR"]]).model_dump_json() for i in range(3)) + "\n")
    summary = build([dialogues], tmp_path / "b", train=2, test=1, codes="auto", strategy=True)
    assert summary["train"]["codes"] == {"SR": 4} and summary["coder"] == "default"
    first = json.loads((tmp_path / "b" / "samples.test.jsonl").read_text().splitlines()[0])
    assert first["code"] == "SR" and first["history_codes"] == []
