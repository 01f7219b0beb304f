"""The run against a real HTTP server on 127.0.0.1 with scripted answers."""

from __future__ import annotations

import json

import pytest

from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.transcribe import TranscribeConfig, transcribe_file
from mi_llm.transcribe.pricing import DEFAULT_PRICES
from mi_llm.transcribe.runner import summary_path
from mi_llm.transcribe.store import failures_path
from tests.transcribe.conftest import first_client, make_dialogue
from tests.transcribe.server import usage_of


def settings(server, **kw) -> TranscribeConfig:
    base = dict(base_url=server.base_url, model="gpt-4o", concurrency=4, timeout_s=5.0)
    base.update(kw)
    return TranscribeConfig(**base)


def failures(out) -> dict[str, dict]:
    p = failures_path(out)
    if not p.exists():
        return {}
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    ids = [x["id"] for x in lines]
    assert len(ids) == len(set(ids)), "duplicate lines in the failure report"
    return {x["id"]: x for x in lines}


def output_ids(out) -> list[str]:
    return [d.id for d in read_dialogues(out)] if out.exists() else []


def test_good_run_then_rerun_and_cache(server, write_inputs, tmp_path):
    ds = [make_dialogue("e1"), make_dialogue("e2"), make_dialogue("z1", "zh"), make_dialogue("z2", "zh")]
    src, out = write_inputs(ds), tmp_path / "mi.jsonl"
    stats = transcribe_file(src, out, settings(server))
    assert (stats.ok, stats.failed, stats.requests, stats.from_cache) == (4, 0, 4, 0)
    got = {d.id: d for d in read_dialogues(out)}
    assert set(got) == {"e1", "e2", "z1", "z2"}
    z1 = got["z1"]
    assert z1.style == "mi" and z1.language == "zh" and z1.topic == "physical activity"
    t = z1.meta["transcribe"]
    assert t["source_id"] == "z1" and t["backend"] == "openai" and t["model"] == "gpt-4o"
    assert t["prompt_version"].startswith("rewrite.zh@mi-rewrite-1+") and t["attempts"] == 1
    assert [x.text for x in z1.turns if x.role == "client"] == [x.text for x in ds[2].turns if x.role == "client"]
    assert all(x.codes is None for x in z1.turns) and z1.miti_globals is None
    body = server.calls[0].body
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 4096 and body["temperature"] == 0.7
    assert body["response_format"] == {"type": "json_object"} and "seed" not in body

    # Cost: every call's usage times the gpt-4o price.
    price = DEFAULT_PRICES["gpt-4o"]
    want = sum(price.cost(**usage_of(c.messages, json.loads(_answer_of(c)))) for c in server.calls)
    assert stats.cost == pytest.approx(want) and stats.cost > 0
    assert stats.prompt_tokens == sum(
        usage_of(c.messages, json.loads(_answer_of(c)))["prompt_tokens"] for c in server.calls
    )
    summary = json.loads(summary_path(out).read_text())
    assert summary["stats"]["ok"] == 4 and summary["stats"]["cost"] == pytest.approx(want)
    assert "Authorization" not in json.dumps(summary)

    # Rerun: nothing to do, nothing sent.
    n = len(server.calls)
    again = transcribe_file(src, out, settings(server))
    assert (again.already_done, again.requests, len(server.calls)) == (4, 0, n)

    # Output lost but cache kept: everything comes back from the cache, free.
    out.unlink()
    third = transcribe_file(src, out, settings(server))
    assert (third.ok, third.from_cache, third.requests, third.cache_hits, len(server.calls)) == (4, 4, 0, 4, n)
    assert third.cost == 0 and third.saved_cost == pytest.approx(want)
    assert sorted(output_ids(out)) == ["e1", "e2", "z1", "z2"]


def _answer_of(call) -> str:
    """Recompute what the scripted server answered for a 'good' call (json-quoted)."""
    from tests.transcribe.server import dialogue_in, good_answer

    lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in call.key) else "en"
    return json.dumps(good_answer(dialogue_in(call.messages), lang))


def test_malformed_answer_is_repaired_with_the_error_fed_back(server, write_inputs, tmp_path):
    d = make_dialogue("m")
    server.script.scripts[first_client(d)] = ["malformed", "meta", "good"]
    out = tmp_path / "mi.jsonl"
    stats = transcribe_file(write_inputs([d]), out, settings(server))
    assert (stats.ok, stats.repairs, stats.requests) == (1, 2, 3)
    calls = server.calls_for(first_client(d))
    second, third = calls[1].messages, calls[2].messages
    assert second[-2]["role"] == "assistant" and second[-1]["role"] == "user"
    assert "not valid JSON" in second[-1]["content"]
    assert "text outside the JSON object" in third[-1]["content"] and len(third) == 6
    assert read_dialogues(out)[0].meta["transcribe"]["attempts"] == 3


def test_always_bad_goes_to_the_failure_report_never_to_the_output(server, write_inputs, tmp_path):
    bad, ok = make_dialogue("bad", "zh"), make_dialogue("ok", "zh")
    server.script.scripts[first_client(bad)] = ["wrong_order", "english", "wrong_order"]
    src, out = write_inputs([bad, ok]), tmp_path / "mi.jsonl"
    stats = transcribe_file(src, out, settings(server))
    assert (stats.ok, stats.failed, stats.failure_kinds) == (1, 1, {"validation": 1})
    assert output_ids(out) == ["ok"]
    f = failures(out)["bad"]
    assert f["kind"] == "validation" and len(f["errors"]) == 3 and f["attempts"] == 3
    assert "should be by the client" in f["reason"] and "not in Chinese" in f["errors"][1]
    assert f["prompt_version"].startswith("rewrite.zh@") and f["paid_calls"] == 3

    n = len(server.calls)
    again = transcribe_file(src, out, settings(server))
    assert (again.already_failed, again.requests, len(server.calls)) == (1, 0, n)

    # --retry-failed asks again, past the cache (the same answers would fail the same way).
    server.script.scripts[first_client(bad)] = ["good"]
    retried = transcribe_file(src, out, settings(server, retry_failed=True))
    assert (retried.ok, retried.requests, len(server.calls)) == (1, 1, n + 1)
    assert sorted(output_ids(out)) == ["bad", "ok"] and failures(out) == {}


def test_429_honours_retry_after(server, write_inputs, tmp_path):
    d = make_dialogue("r")
    server.script.scripts[first_client(d)] = ["429:1", "good"]
    stats = transcribe_file(write_inputs([d]), tmp_path / "mi.jsonl", settings(server))
    assert (stats.ok, stats.retries, stats.requests) == (1, 1, 2)
    first, second = server.calls_for(first_client(d))
    assert second.started - first.started >= 1.0


def test_500_and_timeouts_are_retried(server, write_inputs, tmp_path):
    a, b = make_dialogue("five"), make_dialogue("slow")
    server.script.scripts[first_client(a)] = ["500", "500", "good"]
    server.script.scripts[first_client(b)] = ["hang", "good"]  # the first answer comes only at release()
    stats = transcribe_file(write_inputs([a, b]), tmp_path / "mi.jsonl", settings(server, timeout_s=1.0))
    assert (stats.ok, stats.retries) == (2, 3)
    hung = server.calls_for(first_client(b))[0]
    assert hung.action == "hang" and hung.finished is None  # the run gave up on it and retried


def test_persistent_5xx_is_an_api_failure_retried_by_the_next_run(server, write_inputs, tmp_path):
    d = make_dialogue("down")
    server.script.scripts[first_client(d)] = ["500"]
    src, out = write_inputs([d]), tmp_path / "mi.jsonl"
    stats = transcribe_file(src, out, settings(server, max_retries=2))
    assert (stats.failed, stats.requests, stats.retries) == (1, 3, 2)
    f = failures(out)["down"]
    assert f["kind"] == "api" and "HTTP 500" in f["reason"]
    server.script.scripts[first_client(d)] = ["good"]
    server._per_key.clear()
    again = transcribe_file(src, out, settings(server))
    assert again.ok == 1 and output_ids(out) == ["down"] and failures(out) == {}


def test_refused_request_is_not_retried(server, write_inputs, tmp_path):
    d = make_dialogue("big")
    server.script.scripts[first_client(d)] = ["400"]
    src, out = write_inputs([d]), tmp_path / "mi.jsonl"
    stats = transcribe_file(src, out, settings(server))
    assert (stats.failed, stats.requests, stats.retries) == (1, 1, 0)
    assert failures(out)["big"]["kind"] == "request" and "HTTP 400" in failures(out)["big"]["reason"]
    again = transcribe_file(src, out, settings(server))
    assert (again.already_failed, again.requests) == (1, 0)


def test_bad_key_stops_the_run(server, write_inputs, tmp_path):
    d = make_dialogue("key")
    server.script.scripts[first_client(d)] = ["401"]
    out = tmp_path / "mi.jsonl"
    with pytest.raises(MiLlmError, match="HTTP 401"):
        transcribe_file(write_inputs([d]), out, settings(server))
    assert output_ids(out) == [] and failures(out) == {}


def test_out_of_credit_stops_the_run_without_retrying(server, write_inputs, tmp_path):
    d = make_dialogue("broke")
    server.script.scripts[first_client(d)] = ["quota"]
    with pytest.raises(MiLlmError, match="insufficient_quota"):
        transcribe_file(write_inputs([d]), tmp_path / "mi.jsonl", settings(server))
    assert len(server.calls) == 1  # waiting will not bring credit back: no retry


def test_cut_answers_no_usage_and_no_client_turn(server, write_inputs, tmp_path):
    cut, nousage = make_dialogue("cut"), make_dialogue("nousage")
    server.script.scripts[first_client(cut)] = ["cut"]
    server.script.scripts[first_client(nousage)] = ["nousage"]
    empty = Dialogue.model_validate(
        {"id": "empty", "source": "t", "language": "en", "turns": [{"role": "counselor", "text": "Hello?"}]}
    )
    out = tmp_path / "mi.jsonl"
    stats = transcribe_file(write_inputs([cut, nousage, empty]), out, settings(server, max_repairs=0))
    assert (stats.ok, stats.failed, stats.usage_estimated_calls) == (1, 2, 1)
    f = failures(out)
    assert "cut off at the token limit" in f["cut"]["reason"]
    assert f["empty"]["kind"] == "input" and f["empty"]["paid_calls"] == 0


def test_concurrency_limit_and_id_suffix(server, write_inputs, tmp_path):
    # The first request waits until a second is in flight, so the limit is reached whatever
    # the machine's speed; slow answers give a third request (a broken limit) time to show.
    server.script.wait_for_peak = 2
    server.script.delay_s = 0.15
    ds = [make_dialogue(f"c{i}") for i in range(6)]
    out = tmp_path / "mi.jsonl"
    stats = transcribe_file(write_inputs(ds), out, settings(server, concurrency=2, id_suffix="-mi"))
    assert stats.ok == 6
    assert server.peak_in_flight == 2
    assert sorted(output_ids(out)) == [f"c{i}-mi" for i in range(6)]
    again = transcribe_file(write_inputs(ds), out, settings(server, id_suffix="-mi"))
    assert again.already_done == 6


def test_unknown_price_is_not_free(server, write_inputs, tmp_path):
    stats = transcribe_file(write_inputs([make_dialogue("p")]), tmp_path / "mi.jsonl", settings(server, model="my-llm"))
    assert stats.cost == 0 and stats.cost_unknown_calls == 1 and "unpriced" in stats.cost_display
