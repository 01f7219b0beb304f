"""Ablations: arms merged from a base config, and the table that compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_llm.ablation import ablation_table, is_ablation, load_ablation, merge, table_lines, write_ablation_html
from mi_llm.errors import InputError
from mi_llm.layout import AblationPaths
from mi_llm.stages import StageRunner

ROOT = Path(__file__).resolve().parents[1]


def test_merge_maps_key_by_key_and_replaces_the_rest() -> None:
    base = {"split": {"train": 64, "test": 8}, "sources": [{"kind": "demo"}]}
    out = merge(base, {"split": {"codes": "corpus"}, "sources": [{"kind": "demo", "style": "raw"}]})
    assert out == {"split": {"train": 64, "test": 8, "codes": "corpus"}, "sources": [{"kind": "demo", "style": "raw"}]}
    assert base["split"] == {"train": 64, "test": 8}  # not changed


@pytest.mark.parametrize("name", ["strategy", "reflections", "rewrite"])
def test_shipped_ablations_validate(name: str) -> None:
    path = ROOT / "configs" / f"ablation-{name}.yaml"
    assert is_ablation(path) and not is_ablation(ROOT / "configs" / "demo.yaml")
    ab, arms = load_ablation(path)
    assert len(arms) >= 2 and all(cfg.name == f"{ab.name}-{label}" for label, cfg in arms.items())
    if name == "strategy":
        from mi_llm.build.strategy import load_policy

        assert load_policy(ROOT / "configs" / "policies" / "expert.yaml").reflection == "CR"
        assert arms["strategy"].split.strategy and arms["strategy"].generation.strategy == "model"
        assert not arms["sft"].split.strategy and arms["sft"].split.train == 64  # the rest is the demo's
        simulated = [system for _, _, system in arms["strategy"].simulated_systems()]
        assert simulated == ["base", "finetuned", "finetuned-CR", "finetuned-policy-expert"]
    if name == "reflections":
        assert [cfg.split.augment_cr for cfg in arms.values()] == [0, 1, 2]
    if name == "rewrite":
        assert arms["raw"].sources[0].style == "raw" and ab.reference_arm == "raw"


def test_arm_errors_name_the_arm(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("sources:\n  - kind: demo\n")
    bad = tmp_path / "a.yaml"
    bad.write_text("name: a\nbase: base.yaml\narms:\n  - label: x\n  - label: y\n    set: {split: {strategy: true}}\n")
    with pytest.raises(InputError, match="arm 'y': split: .*codes"):
        load_ablation(bad)
    one = tmp_path / "one.yaml"
    one.write_text("name: a\nbase: base.yaml\narms:\n  - label: x\n")
    with pytest.raises(InputError, match="arms"):
        load_ablation(one)


class QuestionCoder:
    """A stand-in coder: an utterance ending with '?' is a question, anything else a complex reflection."""

    def code_dialogues(self, dialogues):
        from mi_llm.corpus.schema import Utterance

        def code(t):
            if t.role != "counselor":
                return t
            return t.model_copy(update={"codes": [Utterance(text=t.text, code="Q" if t.text.endswith("?") else "CR")]})

        return [d.model_copy(update={"turns": [code(t) for t in d.turns]}) for d in dialogues]


def test_table_compares_the_arms(tmp_path: Path, monkeypatch) -> None:
    import mi_llm.miti.coders as coders
    from mi_llm.evaluate.metrics import evaluate_file
    from mi_llm.io import iter_jsonl, write_jsonl
    from mi_llm.pipeline import data_stages, following_stages, miti_stage

    monkeypatch.setattr(coders, "load_coder", lambda name: QuestionCoder())
    (tmp_path / "base.yaml").write_text(
        "sources:\n  - kind: demo\n    language: en\n    style: mi\nsplit: {train: 2, test: 3, seed: 1}\n"
    )
    spec = tmp_path / "ab.yaml"
    spec.write_text(
        "name: ab\nbase: base.yaml\nresamples: 200\narms:\n  - label: sft\n  - label: steered\n"
        "    set: {split: {codes: corpus, strategy: true}, generation: {strategy: model, strategies: [CR]}}\n"
    )
    ab, arms = load_ablation(spec)
    folder = AblationPaths(tmp_path / "runs")
    replies = {"base": "Why?", "finetuned": "Why?", "finetuned-CR": "You feel stuck."}
    for label, cfg in arms.items():
        paths = folder.arm(label)
        runner = StageRunner(paths.root)
        for stage in data_stages(cfg, paths):
            runner(stage)
        for _, key, system in cfg.systems():
            steered = label == "steered" and system != "base"
            preds = [
                {
                    "sample_id": s["sample_id"],
                    "dialogue_id": s["dialogue_id"],
                    "round": s["round"],
                    "language": s["language"],
                    "prediction": replies[system] if label == "steered" else "Why?",
                    "reference": s["response"],
                    **({"strategy": "CR", "requested": "CR", "code": "CR"} if steered else {}),
                }
                for _, s in iter_jsonl(paths.build.test_samples)
            ]
            write_jsonl(paths.predictions(key, system), preds)
            evaluate_file(paths.predictions(key, system), paths.metrics(key, system))
        runner(miti_stage(cfg, paths))
        for stage in following_stages(cfg, paths):
            runner(stage)
    table = ablation_table(ab, arms, folder)
    rows = {(r["arm"], r["system"]): r for r in table["rows"]}
    assert set(rows) == {
        ("sft", "base"),
        ("sft", "finetuned"),
        ("steered", "base"),
        ("steered", "finetuned"),
        ("steered", "finetuned-CR"),
    }
    assert rows[("sft", "finetuned")]["r_q"] == 0.0 and "differences" not in rows[("sft", "finetuned")]
    cr = rows[("steered", "finetuned-CR")]
    assert cr["compared_with"] == "sft finetuned" and cr["code_following"] == 1.0 and cr["r_q"] is None
    assert cr["pct_cr"] == 1.0 and rows[("steered", "finetuned")]["code_following"] == 0.0
    d = rows[("steered", "finetuned")]["differences"]["r_q"]
    assert d["difference"] == 0.0 and d["low"] == d["high"] == 0.0 and d["resamples"] == 200
    assert table["coder"] == ["default"] and rows[("sft", "finetuned")]["bleu-4"] is not None
    header, cells = table_lines(table)
    assert len(cells) == 5 and "code-following" in header
    write_ablation_html(table, folder.index)
    assert 'id="ablation-table"' in folder.index.read_text()
    json.dumps(table)  # JSON-able as ablation.json
