"""`mi-llm evaluate`: input formats, generation settings, outputs, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mi_llm.errors import InputError
from mi_llm.evaluate import evaluate_file
from mi_llm.evaluate.paper import reference_pair_scores

GEN = {
    "do_sample": False,
    "temperature": 0.0,
    "max_new_tokens": 256,
    "seed": 42,
    "backend": "llamacpp",
    "model": "gemma-3-270m",
}
PAIRS = [
    ("听起来你最近压力很大。", "听起来你最近压力真的很大，对吗？"),
    ("你想聊聊戒烟的事吗？", "你愿意聊聊戒烟吗？"),
    ("", "嗯，我在听。"),
    ("So you want to cut down.", "You'd like to drink less."),
]


def run(*args):
    return subprocess.run([sys.executable, "-m", "mi_llm", *args], capture_output=True, text=True)


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    return path


def ours(tmp_path: Path, generation: dict | None = GEN, name: str = "predictions.jsonl") -> Path:
    rows = []
    for i, (p, r) in enumerate(PAIRS):
        row = {"sample_id": f"d1-r{i}", "prediction": p, "reference": r, "language": "en" if i == 3 else "zh"}
        if generation is not None:
            row["generation"] = generation
        rows.append(row)
    return write_lines(tmp_path / name, rows)


def test_cli_ours_with_per_sample_and_table(tmp_path):
    src = ours(tmp_path)
    out, per = tmp_path / "m" / "metrics.json", tmp_path / "per.jsonl"
    r = run("evaluate", str(src), "-o", str(out), "--per-sample", str(per))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text(encoding="utf-8"))
    assert m["input"]["format"] == "mi-llm" and m["n_pairs"] == 4
    assert m["generation"] == GEN
    assert m["languages"] == {"zh": 3, "en": 1} and set(m["by_language"]) == {"zh", "en"}
    expected = [reference_pair_scores(p, ref) for p, ref in PAIRS]
    assert m["paper"]["bleu-4"] == pytest.approx(sum(s.bleu4 for s in expected) / 4, abs=1e-9)
    samples = [json.loads(line) for line in per.read_text(encoding="utf-8").splitlines()]
    assert [s["sample_id"] for s in samples] == [f"d1-r{i}" for i in range(4)]
    assert [s["line"] for s in samples] == [1, 2, 3, 4]
    assert [s["paper"]["rouge-l"] for s in samples] == [s.rougel for s in expected]
    assert set(samples[0]["extended"]) == {"sacrebleu", "length", "length-reference", "repetition-rate"}
    assert "bleu-4" in r.stderr and "sacrebleu" in r.stderr and "paper-compatible" in r.stderr


def test_cli_llamafactory_format_default_output(tmp_path):
    src = write_lines(
        tmp_path / "generated_predictions.jsonl",
        [{"prompt": "user\n...", "predict": p, "label": ref} for p, ref in PAIRS[:2]],
    )
    r = run("evaluate", str(src))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert m["input"]["format"] == "llamafactory" and m["n_pairs"] == 2
    assert m["generation"] is None and "not recorded" in r.stderr
    assert m["paper"]["rouge-1"] == pytest.approx(
        sum(reference_pair_scores(p, ref).rouge1 for p, ref in PAIRS[:2]) / 2, abs=1e-9
    )


def test_generation_from_predict_sidecar(tmp_path):
    src = ours(tmp_path, generation=None)
    sidecar = {
        "settings": {"backend": "hf", "generation": {"do_sample": True, "temperature": 0.95, "top_p": 0.7}},
        "complete": True,
    }
    (tmp_path / "predictions.jsonl.meta.json").write_text(json.dumps(sidecar), encoding="utf-8")
    m = evaluate_file(src)
    assert m["generation"] == {"do_sample": True, "temperature": 0.95, "top_p": 0.7}
    assert m["meta"] == sidecar and m["input"]["sidecar"].endswith("predictions.jsonl.meta.json")


def test_generation_from_first_line_and_differing_lines(tmp_path):
    rows = [{"generation": {"do_sample": False, "seed": 1}, "model": "m"}]
    rows += [{"prediction": p, "reference": r} for p, r in PAIRS[:2]]
    m = evaluate_file(write_lines(tmp_path / "h.jsonl", rows), language="zh")
    assert m["generation"] == {"do_sample": False, "seed": 1} and m["model"] == "m"
    assert m["n_pairs"] == 2 and m["languages"] == {"zh": 2}
    rows = [{"prediction": "a", "reference": "a", "generation": {"seed": s}} for s in (1, 2)]
    m = evaluate_file(write_lines(tmp_path / "d.jsonl", rows))
    assert m["generation"] == [{"seed": 1}, {"seed": 2}]


def test_evaluate_file_writes_nothing_without_output(tmp_path):
    m = evaluate_file(ours(tmp_path))
    assert m["n_pairs"] == 4 and not (tmp_path / "metrics.json").exists()


BAD = [
    ([{"prediction": "a", "reference": "b"}, {"prediction": "a"}], 2, "missing field 'reference'"),
    (['{"prediction": "a", "reference": "b"}', '{"prediction": "a", '], 2, "invalid JSON"),
    ([{"predict": "a", "label": "b"}, {"predict": "a", "label": None}], 2, "field 'label' must be a string, got null"),
    ([{"foo": 1}], 1, "missing field 'prediction'"),
    ([{"prediction": "a", "reference": "b", "language": "fr"}], 1, "field 'language'"),
    ([{"prediction": "a", "reference": "b"}, {"generation": {}}], 2, "missing field 'prediction'"),
]


@pytest.mark.parametrize("lines,lineno,message", BAD)
def test_bad_input_one_line_error_exit_2(tmp_path, lines, lineno, message):
    src = write_lines(tmp_path / "p.jsonl", lines)
    out = tmp_path / "metrics.json"
    r = run("evaluate", str(src), "-o", str(out))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{src}:{lineno}: ") and message in err[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_non_utf8_line(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'{"prediction": "a", "reference": "b"}\n{"prediction": "\xff\xfe", "reference": "b"}\n')
    r = run("evaluate", str(src), "-o", str(tmp_path / "m.json"))
    assert r.returncode == 2 and r.stderr.strip() == f"{src}:2: not valid UTF-8 (invalid start byte at byte 16)"


def test_empty_file_missing_file_and_bad_language_option(tmp_path):
    empty = write_lines(tmp_path / "e.jsonl", [])
    r = run("evaluate", str(empty))
    assert r.returncode == 2 and "no prediction/reference pairs" in r.stderr and "Traceback" not in r.stderr
    r = run("evaluate", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run("evaluate", str(ours(tmp_path)), "--language", "fr")
    assert r.returncode == 2 and "language must be one of zh, en" in r.stderr


def test_bad_sidecar_is_located(tmp_path):
    src = ours(tmp_path)
    (tmp_path / "predictions.jsonl.meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match=r"meta\.json:1: invalid JSON"):
        evaluate_file(src)


def test_code_following_needs_strategy_predictions(tmp_path: Path) -> None:
    """--code-following on predictions made without --strategy: one line, exit 2, before any coder loads."""
    preds = write_lines(
        tmp_path / "p.jsonl",
        [
            {"sample_id": f"d#{i}", "dialogue_id": "d", "round": i, "prediction": p, "reference": r}
            for i, (p, r) in enumerate(PAIRS[:2], start=1)
        ],
    )
    r = run("evaluate", str(preds), "-o", str(tmp_path / "m.json"), "--code-following")
    assert r.returncode == 2 and "no prediction carries a strategy code" in r.stderr
    assert (tmp_path / "m.json").is_file() and not (tmp_path / "code_following.json").exists()
