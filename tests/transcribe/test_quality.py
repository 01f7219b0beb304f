"""`--code`: the rewritten dialogues are coded and scored with mi_llm.miti's scoring."""

from __future__ import annotations

import json

import pytest

from mi_llm.corpus.schema import Turn, Utterance, write_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.miti.results import read_miti_scores
from mi_llm.transcribe import quality
from tests.transcribe.conftest import make_dialogue


class SentenceCoder:
    """Codes the first sentence of each counselor turn `first`, the second `Q`."""

    def __init__(self, first: dict[str, str]):
        self.first = first

    def code_dialogues(self, dialogues):
        out = []
        for d in dialogues:
            turns = []
            for t in d.turns:
                if t.role == "counselor":
                    a, b = t.text.split(". ", 1)
                    t = Turn(
                        role="counselor",
                        text=t.text,
                        codes=[Utterance(text=a + ".", code=self.first[d.id]), Utterance(text=b, code="Q")],
                    )
                turns.append(t)
            out.append(d.model_copy(update={"turns": turns}))
        return out


def test_code_output_scores_pct_cr_rq_and_ratio(tmp_path, capsys):
    ds = [make_dialogue("a"), make_dialogue("b")]
    for d in ds:
        for t in d.turns:
            if t.role == "counselor":
                t.text = "It sounds like this matters. What would you like to do?"
    out = tmp_path / "mi.jsonl"
    write_dialogues(out, ds)
    r = quality.code_output(out, "fake", SentenceCoder({"a": "SR", "b": "CR"}))
    mi = r.systems["mi"]  # one system, named by the output file's stem
    assert r.coder == "fake" and mi.n_sessions == 2 and mi.files == [str(tmp_path / "mi.jsonl.coded.jsonl")]
    assert mi.pooled.pct_cr == pytest.approx(0.5) and mi.pooled.r_q == pytest.approx(1.0)
    assert mi.pooled.mi_adherent_ratio is None  # no adherent or non-adherent code: undefined, not 0
    assert mi.aggregate["pct_cr"].mean == pytest.approx(0.5)
    # the schema of every miti.json (mi_llm.miti.results), as `miti score` and the pipeline write it
    assert read_miti_scores(tmp_path / "mi.jsonl.miti.json") == r
    written = json.loads((tmp_path / "mi.jsonl.miti.json").read_text())
    assert written["schema_version"] == 2 and written["systems"]["mi"]["pooled"]["r_q"] == pytest.approx(1.0)
    coded = [json.loads(x) for x in (tmp_path / "mi.jsonl.coded.jsonl").read_text().splitlines()]
    assert coded[0]["turns"][1]["codes"][0]["code"] == "SR"
    from mi_llm.cli.transcribe import _print_quality

    _print_quality(r)  # what `transcribe --code` prints
    err = capsys.readouterr().err
    assert "MITI (2 rewritten dialogues, coder fake)" in err and "50%" in err and "n/a (undefined)" in err
    assert "coded.js" in err.replace("\n", "")  # the coded file (wrapped by the terminal width)


def test_missing_coder_folder_is_a_clear_error(tmp_path):
    # `--code` loads its coder with the one load_coder (mi_llm.miti.coders)
    (tmp_path / "mi.jsonl").write_text("")
    with pytest.raises(MiLlmError, match="no such coder folder"):
        quality.code_output(tmp_path / "mi.jsonl", coder_name=str(tmp_path / "nope"))
