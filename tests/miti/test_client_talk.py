"""The client-talk coder (change / sustain / neutral): data, model, nested-CV pieces, CLI, dialogues."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mi_llm.corpus.schema import Turn
from mi_llm.miti.coders import client_talk as ct
from mi_llm.miti.coders import client_talk_cv as cv
from mi_llm.resources import demo_dialogues
from tests.conftest import shared_data_dir

ANNOMI = shared_data_dir() / "annomi" / "AnnoMI-full.csv"
needs_annomi = pytest.mark.skipif(not ANNOMI.is_file(), reason="../shared/data/annomi is absent")
NGRAM_ONLY = ct.ClientTalkConfig(previous_weight=0.5, C=1.0)  # no embedded model: fast


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mi_llm", "miti", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def annomi():
    if not ANNOMI.is_file():
        pytest.skip("../shared/data/annomi is absent")
    return ct.load_annomi_client(ANNOMI)


@pytest.fixture(scope="module")
def split(annomi):
    """80 transcripts to train on, the other 26 to test on (never seen)."""
    folds = cv.transcript_folds(annomi, 4, seed=0)
    test = folds[0]
    train = np.setdiff1d(np.arange(len(annomi)), test)
    return [annomi[i] for i in train], [annomi[i] for i in test]


@pytest.fixture(scope="module")
def small_coder(split, tmp_path_factory):
    coder = ct.ClientTalkCoder.fit(split[0], NGRAM_ONLY)
    return coder.save(tmp_path_factory.mktemp("ct") / "coder")


@needs_annomi
def test_annomi_client_utterances_have_context_and_majority_labels(annomi):
    assert len(annomi) > 3500 and len({e.group for e in annomi}) == 106
    assert {e.talk for e in annomi} == set(ct.TALK_TYPES)
    assert sum(1 for e in annomi if e.previous) / len(annomi) > 0.99  # the counselor spoke before
    first = [e for e in annomi if e.group == "annomi-0"]
    assert first[1].history == first[0].text  # the client's own turn before


def test_ties_are_dropped_and_previous_is_the_latest_counselor_turn(tmp_path):
    p = tmp_path / "a.csv"
    head = "transcript_id,utterance_id,interlocutor,utterance_text,client_talk_type,annotator_id\n"
    rows = [
        "7,0,therapist,What would be good about quitting?,,1",
        '7,1,client,"I could breathe again.",change,1',
        "7,2,client,But I like it.,sustain,1",
        "7,2,client,But I like it.,neutral,2",
        "7,3,therapist,You enjoy it.,,1",
        "7,4,client,Yeah.,neutral,1",
        "7,4,client,Yeah.,neutral,2",
        "7,4,client,Yeah.,sustain,3",
    ]
    p.write_text(head + "\n".join(rows) + "\n")
    ex = ct.load_annomi_client(p)
    assert [(e.text, e.talk) for e in ex] == [("I could breathe again.", "change"), ("Yeah.", "neutral")]
    assert ex[0].previous == "What would be good about quitting?" and ex[0].history == ""
    assert ex[1].previous == "You enjoy it." and ex[1].history == "But I like it."


@needs_annomi
def test_coder_on_unseen_transcripts_is_well_above_chance(split, small_coder):
    coder = ct.ClientTalkCoder.load(small_coder)
    test = split[1]
    pred = coder.code([ct.ClientItem(e.text, e.previous, e.history, "en") for e in test])
    m = cv.talk_metrics([e.talk for e in test], pred)
    # chance: kappa 0, macro-F1 about 0.33; utterance-only n-grams reach about 0.53 / 0.34
    assert m["kappa"] > 0.25 and m["macro_f1"] > 0.48, m
    assert all(m["per_class"][t]["f1"] > 0.2 for t in ct.TALK_TYPES), m


@needs_annomi
def test_save_load_gives_the_same_predictions(split, small_coder, tmp_path):
    fitted = ct.ClientTalkCoder.load(small_coder)
    items = [ct.ClientItem(e.text, e.previous, e.history, "en") for e in split[1][:200]]
    again = ct.ClientTalkCoder.load(fitted.save(tmp_path / "copy"))
    assert np.allclose(fitted.predict_proba(items), again.predict_proba(items))
    assert json.loads((tmp_path / "copy" / "client_talk.json").read_text())["labels"] == list(ct.TALK_TYPES)


def test_load_refuses_what_is_not_a_client_coder(tmp_path):
    with pytest.raises(ct.MiLlmError, match="not a client-talk coder folder"):
        ct.ClientTalkCoder.load(tmp_path)
    (tmp_path / "client_talk.json").write_text(json.dumps({"format": ct.FORMAT, "version": 99}))
    with pytest.raises(ct.MiLlmError, match="version 99"):
        ct.ClientTalkCoder.load(tmp_path)


def test_bias_search_and_macro_f1():
    y = np.array([0, 0, 1, 2, 2, 2, 2, 2])
    scores = np.log(np.array([[0.3, 0.1, 0.6]] * 2 + [[0.1, 0.3, 0.6]] + [[0.1, 0.1, 0.8]] * 5))
    assert cv.macro_f1(y, scores.argmax(1)) == pytest.approx((0 + 0 + 2 * 5 / 13) / 3)
    bias, f1 = cv.tune_bias(scores, y)
    assert f1 == pytest.approx(1.0) and bias["change"] > 0 and bias["sustain"] > 0


def test_folds_never_split_a_transcript():
    ex = [ct.ClientExample(f"u{i}", "neutral", f"t{i % 7}") for i in range(50)]
    folds = cv.transcript_folds(ex, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(50))
    groups = [{ex[i].group for i in f} for f in folds]
    assert all(not (a & b) for k, a in enumerate(groups) for b in groups[k + 1 :])


def test_talk_is_for_client_turns_only():
    assert Turn(role="client", text="I want to quit.", talk="change").talk == "change"
    with pytest.raises(ValueError, match="only client turns"):
        Turn(role="counselor", text="Why?", talk="change")
    with pytest.raises(ValueError):
        Turn(role="client", text="Hm.", talk="maybe")


@needs_annomi
def test_coded_dialogues_get_client_talk(small_coder):
    from mi_llm.miti.coders.base import code_client_turns

    dialogues = [d.model_copy(deep=True) for d in demo_dialogues("en")[:3]]
    code_client_turns(dialogues, str(small_coder))
    for d in dialogues:
        assert d.meta["client_talk_coder"].startswith("client-talk:")
        assert all((t.talk in ct.TALK_TYPES) == (t.role == "client") for t in d.turns if t.text.strip())
        d.model_validate(d.model_dump())  # still a valid Dialogue


# ---------------------------------------------------------------- the command line


@needs_annomi
def test_code_client_cli(small_coder, tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [
        {
            "id": 1,
            "text": "I really want to stop drinking, for my kids.",
            "language": "en",
            "previous": "What would be good about cutting down?",
        },
        {"id": "b", "text": "I don't think I have a problem. Everybody drinks.", "note": "kept"},
        {"id": 3, "text": "Okay.", "previous": "Shall we look at the form?", "history": "Fine."},
    ]
    inp.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "out.jsonl"
    r = run("code-client", str(inp), "--coder", str(small_coder), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, "b", 3] and got[1]["note"] == "kept"
    assert all(g["talk"] in ct.TALK_TYPES for g in got)
    coder = ct.ClientTalkCoder.load(small_coder)  # the command codes as the library does, context included
    items = [ct.ClientItem(x["text"], x.get("previous", ""), x.get("history", ""), x.get("language")) for x in rows]
    assert [g["talk"] for g in got] == coder.code(items)
    assert got[2]["talk"] == "neutral"
    assert "coded 3 client utterances" in r.stderr and "wrote" in r.stderr


@pytest.mark.parametrize(
    "line, message",
    [
        ({"text": "Hi."}, "needs an 'id'"),
        ({"id": 1}, "'text' must be a non-empty string"),
        ({"id": 1, "text": "  "}, "'text' must be a non-empty string"),
        ({"id": 1, "text": "Hi.", "language": "fr"}, "'language' must be zh or en"),
        ({"id": 1, "text": "Hi.", "previous": ["a"]}, "'previous' must be a string"),
        ({"id": 1, "text": "Hi.", "history": 3}, "'history' must be a string"),
        ({"id": 0, "text": "Hi."}, "id 0 repeats line 1"),
    ],
)
def test_code_client_cli_bad_lines(tmp_path, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 0, "text": "Fine."}) + "\n" + json.dumps(line) + "\n")
    out = tmp_path / "out.jsonl"
    err = _one_line_error(run("code-client", str(inp), "-o", str(out)))
    assert err.startswith(f"{inp}:2: ") and message in err, err
    assert not out.exists()


def test_code_client_cli_bad_json_and_bad_coder(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "text": "Fine."}\n{"id": 2, "text": \n')
    assert _one_line_error(run("code-client", str(inp), "-o", str(tmp_path / "o.jsonl"))).startswith(f"{inp}:2:")
    inp.write_text('{"id": 1, "text": "Fine."}\n')
    err = _one_line_error(
        run("code-client", str(inp), "-o", str(tmp_path / "o.jsonl"), "--coder", str(tmp_path / "no"))
    )
    assert "no such client-talk coder folder" in err


def test_shipped_coder_records_its_data_recipe_and_validity():
    meta = json.loads((ct.shipped_client_coder_dir() / "client_talk.json").read_text())
    assert meta["format"] == ct.FORMAT and meta["version"] in ct.READABLE_VERSIONS
    assert meta["info"]["data"][0]["kind"] == "annomi" and meta["info"]["n_transcripts"] == 106
    v = meta["validity"]
    assert "nested CV by transcript" in v["protocol"] and v["macro_f1"]["mean"] > v["baseline"]["macro_f1"]["mean"]
    size = sum(f.stat().st_size for f in ct.shipped_client_coder_dir().rglob("*") if f.is_file())
    assert size < 8_000_000  # a few MB in the package


def test_scores_count_client_talk():
    from mi_llm.corpus.schema import Dialogue
    from mi_llm.miti.aggregate import aggregate, pooled
    from mi_llm.miti.scoring import score_session

    def session(i, talks):
        turns = []
        for t in talks:
            turns += [
                {"role": "counselor", "text": "Why?", "codes": [{"text": "Why?", "code": "Q"}]},
                {"role": "client", "text": "Because.", "talk": t},
            ]
        return Dialogue.model_validate({"id": f"s{i}", "source": "t", "language": "en", "turns": turns})

    a = score_session(session(1, ["change", "change", "sustain", "neutral"]))
    assert a.client_talk.model_dump() == {"change": 2, "sustain": 1, "neutral": 1, "change_share": 2 / 3, "ct_st": 2.0}
    b = score_session(session(2, ["neutral", "change"]))
    assert b.client_talk.ct_st is None and b.value("ct_st") is None and b.value("change_share") == 1.0
    uncoded = session(3, ["neutral"])
    uncoded.turns[1].talk = None
    assert score_session(uncoded).client_talk is None
    agg = aggregate([a, b])
    assert agg["change_share"]["n"] == 2 and agg["ct_st"]["missing"] == 1
    assert pooled([a, b])["client_talk"]["change_share"] == pytest.approx(3 / 4)


def _written_client_examples() -> list[ct.ClientExample]:
    """A few dozen client turns written for this test, with the counselor's turn before each."""
    change = ["I really want to cut down.", "I could save money if I quit.", "My kids need me healthy."]
    sustain = ["I like drinking with my friends.", "Smoking helps me relax.", "I don't see a problem."]
    neutral = ["I work at the bakery.", "It was a Tuesday.", "My sister lives nearby."]
    out = []
    for k in range(8):
        for talk, texts in (("change", change), ("sustain", sustain), ("neutral", neutral)):
            for j, text in enumerate(texts):
                out.append(ct.ClientExample(text, talk, f"t{k}", previous=f"What else? ({j})", uid=f"{k}-{talk}-{j}"))
    return out


def test_an_encoder_expert_with_lora_adapters_trains_saves_and_loads(tiny_encoder, tmp_path):
    examples = _written_client_examples()
    encoder = ct.client_encoder_config(model=tiny_encoder.model, epochs=1, batch_size=8, lr=1e-3, lora_r=4)
    assert encoder.context_speaker == "Counselor"
    config = ct.ClientTalkConfig(previous_weight=0.5, C=1.0, encoder=encoder.to_dict())
    coder = ct.ClientTalkCoder.fit(examples, config)
    items = [ct.ClientItem(e.text, e.previous) for e in examples[:12]]
    p = coder.predict_proba(items)
    assert p.shape == (12, 3) and np.allclose(p.sum(1), 1.0)
    without = ct.ClientTalkCoder(coder.config, coder.ngram, coder.embed, coder.info)
    assert not np.allclose(without.predict_proba(items), p)  # the encoder votes
    folder = coder.save(tmp_path / "c")
    assert json.loads((folder / "client_talk.json").read_text())["version"] == ct.VERSION_WITH_ENCODER
    adapters = folder / "encoder" / "adapters.safetensors"
    assert (
        adapters.is_file() and not (folder / "encoder" / "config.json").exists()
    )  # the encoder is read from its own folder
    assert adapters.stat().st_size < 200_000
    again = ct.ClientTalkCoder.load(folder)
    assert np.allclose(again.predict_proba(items), p, atol=1e-6)  # adapters stored in fp32
    adapters.write_bytes(b"not safetensors")
    with pytest.raises(ct.MiLlmError, match="encoder: unreadable"):
        ct.ClientTalkCoder.load(folder)
    adapters.unlink()
    with pytest.raises(ct.MiLlmError, match="adapters.safetensors missing"):
        ct.ClientTalkCoder.load(folder)


def test_the_encoder_rows_are_graded_in_the_nested_outer_folds(tiny_encoder):
    examples = _written_client_examples()
    result = cv.nested_cv(examples, None, None, outer=4, inner=2)
    assert all("config" in r for r in result["folds"]["product (chosen)"])
    encoder = ct.client_encoder_config(model=tiny_encoder.model, epochs=1, batch_size=8, lr=1e-3, lora_r=4).to_dict()
    cv.grade_with_encoder(examples, None, result, encoder)
    row = cv.ENCODER_ROWS["product (chosen)"]
    assert len(result["folds"][row]) == len(result["folds"][cv.ENCODER_ALONE]) == 4
    assert cv.ENCODER_ROWS["embed only"] not in result["folds"]  # no embeddings, no such row
    assert 0.0 <= result["summary"][row]["macro_f1"]["mean"] <= 1.0
    assert result["summary"][row]["pooled"]["n"] == len(examples)
    config = cv.with_encoder(ct.ClientTalkConfig.from_dict(result["folds"]["product (chosen)"][0]["config"]), encoder)
    assert config.encoder == encoder and config.encoder_weight == 1.0
