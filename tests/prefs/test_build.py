"""`mi-llm prefs build`: sampling, pairing, resume, exports and malformed pairs files."""

from __future__ import annotations

import json

import pytest

from mi_llm.cli import main
from mi_llm.errors import InputError, MiLlmError
from mi_llm.prefs.build import build_prefs, candidates_file, summary_file
from mi_llm.prefs.config import PrefsConfig
from mi_llm.prefs.pairs import (
    LLAMAFACTORY_FILE,
    read_pairs,
    trl_record,
    write_llamafactory_pairs,
    write_trl_pairs,
)
from tests.prefs.conftest import REPLIES, KeywordCoder, ScriptedBackend, make_rounds


def _build(tmp_path, backend, n=6, **cfg):
    data = make_rounds(tmp_path / "samples.train.jsonl", n)
    return build_prefs(
        PrefsConfig(k=4, batch_size=2, **cfg),
        data,
        tmp_path / "prefs.jsonl",
        coder=KeywordCoder(),
        backend=backend,
        show_progress=False,
    )


@pytest.mark.parametrize("backend_name", ["hf", "openai"])
def test_pairs_prefer_the_complex_reflection(tmp_path, backend_name):
    backend = ScriptedBackend(name=backend_name)
    r = _build(tmp_path, backend)
    pairs = read_pairs(r.output)
    assert r.pairs == len(pairs) == 6
    for p in pairs:
        assert p.chosen.text == REPLIES[0] and p.chosen.codes == ["CR"]
        assert p.rejected.text == REPLIES[2] and p.rejected.score < p.chosen.score
        assert p.coder == "keywords"
    # hf: one call per batch holding K copies of each round; openai: K seeded calls per batch
    assert backend.calls == (3 if backend_name == "hf" else 12) and backend.prompts == 24
    s = json.loads(summary_file(r.output).read_text())
    assert s["degenerate"] == {"too short": 6} and s["codes_chosen"] == {"CR": 6}


def test_an_interrupted_build_resumes_without_resampling(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, ScriptedBackend(fail_at_call=2))  # the first batch (2 rounds) is kept
    lines = candidates_file(tmp_path / "prefs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and not (tmp_path / "prefs.jsonl").exists()
    again = ScriptedBackend()
    r = _build(tmp_path, again)
    assert r.sampled_now == 4 and again.prompts == 4 * 4 and r.pairs == 6
    third = ScriptedBackend()
    r = _build(tmp_path, third)  # everything sampled: no generate call at all
    assert third.calls == 0 and r.pairs == 6


def test_other_sampling_settings_do_not_mix_with_saved_replies(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, ScriptedBackend(fail_at_call=2))
    with pytest.raises(MiLlmError, match="sampled with other settings"):
        _build(tmp_path, ScriptedBackend(), temperature=0.7)


def test_no_pair_is_an_error_that_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.prefs.conftest.REPLIES", ["ok", "fine"])
    with pytest.raises(MiLlmError, match="no preference pair from 6 rounds .degenerate replies: 24 too short"):
        _build(tmp_path, ScriptedBackend())
    assert json.loads(summary_file(tmp_path / "prefs.jsonl").read_text())["pairs"] == 0


def test_exports(tmp_path):
    r = _build(tmp_path, ScriptedBackend(), n=2)
    pairs = read_pairs(r.output)
    folder = write_llamafactory_pairs(tmp_path / "lf", pairs)
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["mi_prefs"]["ranking"] is True and info["mi_prefs"]["file_name"] == LLAMAFACTORY_FILE
    records = json.loads((folder / LLAMAFACTORY_FILE).read_text())
    second = records[1]  # d1 has one history round
    assert [m["from"] for m in second["conversations"]] == ["human", "gpt", "human"]
    assert second["chosen"] == {"from": "gpt", "value": pairs[1].chosen.text}
    assert second["rejected"]["value"] == pairs[1].rejected.text and second["system"] == pairs[1].system
    write_trl_pairs(tmp_path / "trl.jsonl", pairs)
    trl = [json.loads(x) for x in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert trl[1] == trl_record(pairs[1])
    assert [m["role"] for m in trl[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert trl[1]["chosen"] == [{"role": "assistant", "content": pairs[1].chosen.text}]


def _pairs_file(tmp_path, lines):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def test_malformed_pairs_are_located(tmp_path):
    r = _build(tmp_path, ScriptedBackend(), n=2)
    good = r.output.read_text().splitlines()
    first = json.loads(good[0])
    same = {**first, "pair_id": "x", "rejected": first["chosen"]}
    cases = [
        ([good[0], "{not json"], 2, "invalid JSON"),
        ([good[0], "", json.dumps({k: v for k, v in first.items() if k != "chosen"})], 3, "chosen"),
        ([good[0], json.dumps(same)], 2, "same text"),
        ([good[0], good[0]], 2, "repeats line 1"),
    ]
    for lines, line, what in cases:
        f = _pairs_file(tmp_path, lines)
        with pytest.raises(InputError, match=what) as e:
            read_pairs(f)
        assert str(e.value).startswith(f"{f}:{line}: ")


def test_cli_export_of_a_malformed_file_exits_2_in_one_line(tmp_path, capsys):
    f = _pairs_file(tmp_path, ['{"pair_id": "a"}'])
    with pytest.raises(SystemExit) as e:
        main(["prefs", "export", str(f), "--trl", str(tmp_path / "t.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{f}:1: ") and "\n" not in err


def test_cli_export_writes_both(tmp_path, capsys):
    r = _build(tmp_path, ScriptedBackend(), n=2)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "prefs",
                "export",
                str(r.output),
                "--trl",
                str(tmp_path / "t.jsonl"),
                "--llamafactory",
                str(tmp_path / "lf"),
            ]
        )
    assert e.value.code == 0
    assert (tmp_path / "t.jsonl").is_file() and (tmp_path / "lf" / "dataset_info.json").is_file()


def test_unscored_replies_round_trip(tmp_path):
    from mi_llm.prefs.pairs import PreferencePair, ScoredReply, write_pairs

    pair = PreferencePair(
        pair_id="a",
        sample_id="a",
        dialogue_id="d",
        round=1,
        language="en",
        system="s",
        query="q",
        chosen=ScoredReply(text="yes"),
        rejected=ScoredReply(text="no"),
    )
    write_pairs(tmp_path / "p.jsonl", [pair])
    assert read_pairs(tmp_path / "p.jsonl") == [pair]
