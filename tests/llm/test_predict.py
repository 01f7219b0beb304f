"""`predict` and `mi-llm predict`: records, sidecar, resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.evaluate.predict import predict, read_done
from mi_llm.llm.backends import preset
from mi_llm.llm.backends.base import Backend, Completion


class Flaky(Backend):
    """Wraps a backend; raises on the call numbered `fail_on` (1-based), counts what it generated."""

    name = "hf"

    def __init__(self, inner: Backend, fail_on: int | None = None):
        self.inner, self.fail_on, self.calls, self.seen = inner, fail_on, 0, []

    def describe(self):
        return self.inner.describe()

    def generate(self, batch, config) -> list[Completion]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.seen += [m[-1]["content"] for m in batch]
        return self.inner.generate(batch, config)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_predict_writes_every_sample(hf_backend, test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    cfg = preset("greedy", max_new_tokens=4)
    res = predict(hf_backend, test_set, out, cfg, batch_size=4)
    recs = lines(out)
    want = [json.loads(x) for x in test_set.read_text().splitlines()]
    assert [r["sample_id"] for r in recs] == [s["sample_id"] for s in want]  # test-set order
    r = recs[0]
    assert {"sample_id", "dialogue_id", "round", "language", "prediction", "reference", "generation"} <= set(r)
    assert r["reference"] == want[0]["response"]
    assert (
        r["generation"]["backend"] == "hf" and r["generation"]["max_new_tokens"] == 4 and r["generation"]["seed"] == 42
    )
    meta = json.loads((tmp_path / "pred.jsonl.meta.json").read_text())
    assert meta["complete"] and meta["samples"] == 9 and meta["settings"]["generation"]["do_sample"] is False
    assert res.completion_tokens == sum(x["completion_tokens"] for x in recs)


def test_resume_after_interruption(hf_backend, test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    cfg = preset("greedy", max_new_tokens=4)
    first = Flaky(hf_backend, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        predict(first, test_set, out, cfg, batch_size=4)
    kept = read_done(out)
    assert len(kept) == 4  # the first batch was flushed
    # a torn last line (killed mid-write) is dropped, not an error
    with open(out, "a") as f:
        f.write('{"sample_id": "d2#3", "predi')
    second = Flaky(hf_backend)
    res = predict(second, test_set, out, cfg, batch_size=4)
    assert res.generated_now == 5 and len(second.seen) == 5
    recs = lines(out)
    assert len(recs) == 9 and len({r["sample_id"] for r in recs}) == 9
    # the same as an uninterrupted run
    fresh = tmp_path / "fresh.jsonl"
    predict(hf_backend, test_set, fresh, cfg, batch_size=4)
    assert [r["prediction"] for r in lines(fresh)] == [r["prediction"] for r in recs]
    # nothing left to do on a third run
    third = Flaky(hf_backend)
    assert predict(third, test_set, out, cfg, batch_size=4).generated_now == 0 and third.calls == 0


def test_other_settings_do_not_resume(hf_backend, test_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    predict(hf_backend, test_set, out, preset("greedy", max_new_tokens=2), limit=3)
    with pytest.raises(MiLlmError, match="other settings.*generation"):
        predict(hf_backend, test_set, out, preset("greedy", max_new_tokens=3), limit=3)
    res = predict(hf_backend, test_set, out, preset("greedy", max_new_tokens=3), limit=3, overwrite=True)
    assert res.generated_now == 3


def test_build_folder_and_missing_data(hf_backend, test_set: Path, tmp_path: Path) -> None:
    res = predict(hf_backend, test_set.parent, tmp_path / "p.jsonl", preset("greedy", max_new_tokens=2), limit=2)
    assert res.samples == 2
    with pytest.raises(MiLlmError, match="no such file"):
        predict(hf_backend, tmp_path / "nope.jsonl", tmp_path / "q.jsonl", preset("greedy"))
    with pytest.raises(MiLlmError, match="samples.test.jsonl"):
        predict(hf_backend, _empty_dir(tmp_path), tmp_path / "q.jsonl", preset("greedy"))


def _empty_dir(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_cli_predict(tiny_model: Path, test_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mi_llm.cli import main

    out = tmp_path / "cli.jsonl"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "predict",
                "--model",
                str(tiny_model),
                "--data",
                str(test_set),
                "-o",
                str(out),
                "--max-new-tokens",
                "3",
                "--batch-size",
                "4",
                "--limit",
                "5",
            ]
        )
    assert e.value.code == 0
    assert len(lines(out)) == 5
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", str(tiny_model), "--data", str(test_set), "-o", str(out), "--preset", "nope"])
    assert e.value.code == 2 and "unknown generation preset" in capsys.readouterr().err


def test_predict_backend_owns_routing_and_default_batch_sizes(monkeypatch) -> None:
    """mi_llm.evaluate.predict: what `mi-llm predict` and the pipeline both choose with."""
    import mi_llm.llm.backends as backends
    from mi_llm.evaluate.predict import PredictBackend, backend_options, default_batch_size

    assert [default_batch_size(b, {}) for b in ("hf", "llamacpp", "openai", "vllm")] == [16, 16, 32, 256]
    assert (
        default_batch_size("llamacpp", {"parallel": 8}) == 32 and default_batch_size("openai", {"concurrency": 2}) == 8
    )
    cli = dict(
        seed=7,
        device="cpu",
        gguf="m.gguf",
        parallel=2,
        threads=3,
        base_url="http://h/v1",
        concurrency=5,
        extra_body='{"top_k": 1}',
    )
    assert backend_options("hf", **cli) == {"device": "cpu"}
    assert backend_options("llamacpp", **cli) == {"gguf": "m.gguf", "parallel": 2, "n_threads": 3, "seed": 7}
    assert backend_options("openai", **cli) == {"base_url": "http://h/v1", "concurrency": 5, "extra_body": {"top_k": 1}}
    assert backend_options("hf", extra_body="not json") == {"device": None}  # another backend's option: not read
    with pytest.raises(MiLlmError, match="--extra-body: invalid JSON"):
        backend_options("openai", extra_body="{")
    with pytest.raises(MiLlmError, match="--extra-body: expected a JSON object"):
        backend_options("openai", extra_body="[1]")

    hf = PredictBackend.choose("hf", "m", None, {"device": "cpu"})
    assert (hf.batch_size, hf.options) == (16, {"device": "cpu", "batch_size": 16})  # hf pads per predict batch
    assert PredictBackend.choose("hf", "m", None, {}, 8).options["batch_size"] == 8
    lc = PredictBackend.choose("llamacpp", "m", "adapter/", {"parallel": 8})
    assert (lc.batch_size, lc.options, lc.adapter) == (32, {"parallel": 8}, "adapter/")
    monkeypatch.setattr(backends, "resolve_auto_backend", lambda: "llamacpp")
    auto = PredictBackend.choose("auto", "m", None, {"parallel": 5})
    assert (auto.name, auto.batch_size) == ("llamacpp", 20)
