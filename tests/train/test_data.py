"""Loss masking, truncation from the oldest rounds, and the order of micro-batches."""

from __future__ import annotations

import pytest

from mi_llm.build.samples import Sample
from mi_llm.errors import MiLlmError
from mi_llm.train.data import (
    IGNORE_INDEX,
    Example,
    SampleTooLong,
    collate,
    encode_sample,
    encode_samples,
    epoch_batches,
    make_schedule,
    micro_stream,
    resolve_data,
    select_records,
)


@pytest.fixture(scope="module")
def tok(tiny_gemma):
    from mi_llm.llm.load import load_tokenizer

    return load_tokenizer(str(tiny_gemma))


def sample(
    history_rounds: int = 3, response: str = "It sounds like you want change .", round_: int | None = None
) -> Sample:
    hist = [(f"I feel stressed {i} .", f"How do you feel {i} ?") for i in range(history_rounds)]
    return Sample(
        sample_id=f"d#{round_ or history_rounds + 1}",
        dialogue_id="d",
        round=round_ or history_rounds + 1,
        language="en",
        source="t",
        system="You are an MI counselor.",
        history=hist,
        query="我 最近 压力 很大",
        response=response,
    )


def labelled_text(tok, ex: Example) -> str:
    return tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX])


def test_loss_only_on_target_reply(tok):
    ex = encode_sample(sample(), tok, 1024, last_only=True)
    assert labelled_text(tok, ex) == "It sounds like you want change .<end_of_turn>\n"
    # every label is either ignored or equal to its input token
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(ex.input_ids, ex.labels))
    assert ex.labels[0] == IGNORE_INDEX and ex.dropped_rounds == 0


def test_dialogue_records_train_every_counselor_turn(tok):
    ex = encode_sample(sample(2), tok, 1024, last_only=False)
    text = labelled_text(tok, ex)
    assert text == (
        "How do you feel 0 ?<end_of_turn>\nHow do you feel 1 ?<end_of_turn>\n"
        "It sounds like you want change .<end_of_turn>\n"
    )
    # no client or system text in the labels
    assert "stressed" not in text and "counselor" not in text


def test_select_records_dialogues_keeps_last_round():
    samples = [sample(0, round_=1), sample(1, round_=2), sample(2, round_=3)]
    assert select_records(samples, "rounds") == samples
    assert [s.round for s in select_records(samples, "dialogues")] == [3]


def test_truncation_drops_oldest_rounds_first(tok):
    s = sample(4)
    full = encode_sample(s, tok, 1024)
    one_round = encode_sample(s.model_copy(update={"history": s.history[-1:]}), tok, 1024)
    ex = encode_sample(s, tok, len(one_round))  # room for exactly the newest round
    assert ex.dropped_rounds == 3 and len(ex) <= len(one_round) < len(full)
    assert ex.input_ids == one_round.input_ids
    assert "stressed 3" in tok.decode(ex.input_ids) and "stressed 0" not in tok.decode(ex.input_ids)
    assert labelled_text(tok, ex) == labelled_text(tok, full)


def test_target_that_cannot_fit_errors_or_is_skipped(tok):
    long = sample(1, response=" ".join(["change"] * 200))
    with pytest.raises(SampleTooLong, match=r"sample d#2: .* over --max-length 64"):
        encode_sample(long, tok, 64)
    ok = sample(0)
    exs, stats = encode_samples([long, ok], tok, 64, on_overflow="skip")
    assert [e.sample_id for e in exs] == [ok.sample_id]
    assert stats.skipped_too_long == 1 and stats.skipped_ids == ["d#2"]
    with pytest.raises(MiLlmError, match="no trainable sample"):
        encode_samples([long], tok, 64, on_overflow="skip")


def test_resolve_data_errors(tmp_path):
    with pytest.raises(MiLlmError, match="no such file or folder"):
        resolve_data(tmp_path / "nope.jsonl")
    with pytest.raises(MiLlmError, match="not a build folder"):
        resolve_data(tmp_path)


def test_batches_grouped_by_length_and_seeded():
    lengths = [5, 50, 7, 48, 6, 49, 8, 51]
    b1 = epoch_batches(lengths, 2, seed=1, epoch=0)
    assert b1 == epoch_batches(lengths, 2, seed=1, epoch=0)
    assert b1 != epoch_batches(lengths, 2, seed=1, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(8))
    # sorted by length inside the mega-batch: each batch pairs neighbours in length
    assert all(abs(lengths[a] - lengths[b]) <= 2 for a, b in b1)
    # batch size 1: plain shuffle, no padding needed
    assert sorted(b[0] for b in epoch_batches(lengths, 1, 3, 0)) == list(range(8))


def test_stream_resumes_and_shards():
    lengths = list(range(10, 20))
    sched = make_schedule(10, 1, grad_accum=4, epochs=2, max_steps=None)
    assert sched.total_steps == 5 and sched.micro_per_epoch == 10
    full = list(micro_stream(lengths, 1, 0, 0, sched))
    assert len(full) == 20  # windows span the epoch boundary
    assert list(micro_stream(lengths, 1, 0, 8, sched)) == full[8:]
    s2 = make_schedule(10, 1, 4, 1, None, world=2)
    r0 = [b for _, b in micro_stream(lengths, 1, 0, 0, s2, world=2, rank=0)]
    r1 = [b for _, b in micro_stream(lengths, 1, 0, 0, s2, world=2, rank=1)]
    assert not {i for b in r0[:5] for i in b} & {i for b in r1[:5] for i in b}


def test_collate_pads_right_and_masks():
    a, b = Example("a", [1, 2, 3], [-100, 2, 3]), Example("b", [4, 5], [-100, 5])
    one = collate([a], pad_id=0)
    assert one["attention_mask"] is None and one["input_ids"].tolist() == [[1, 2, 3]]
    two = collate([a, b], pad_id=0)
    assert two["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert two["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert two["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_slow_tokenizer_path_gives_the_fast_paths_ids_and_labels(tok):
    """Baichuan2 and GLM-4 ship slow tokenizers (no character offsets): their replies are found
    by tokenizing the text between reply edges piece by piece. That must give the very ids and
    labels the fast path gives, on a byte-level BPE as GLM-4's (zh and en, with history)."""
    from tests.train.conftest import assert_slow_path_equals_fast

    assert_slow_path_equals_fast(tok)
