import json
import subprocess
import sys
from pathlib import Path

import pytest

from mi_llm.config import load_config
from mi_llm.errors import InputError
from mi_llm.io import write_json
from mi_llm.layout import RunPaths
from mi_llm.stages import Stage, StageRunner

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.sources[0].kind == "demo" and demo.train_enabled
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert paper.split.train == 2000 and paper.split.test == 40 and len(paper.models) == 3
    opts = paper.train_options("m", "d", "o")
    assert (opts.lr, opts.lr_scheduler, opts.batch_size, opts.grad_accum, opts.epochs, opts.warmup_ratio) == (
        1e-4,
        "cosine",
        1,
        8,
        3,
        0.1,
    )


def test_transcription_rewrites_only_what_the_split_uses():
    from mi_llm.config import ExperimentConfig
    from mi_llm.pipeline import dialogues_to_transcribe

    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert dialogues_to_transcribe(paper) == 2142  # 2,040 + 5% for rewrites that fail validation
    src = [{"kind": "demo"}]
    assert dialogues_to_transcribe(ExperimentConfig(sources=src, split={"train": 0.8, "test": 0.2})) is None
    assert dialogues_to_transcribe(ExperimentConfig(sources=src, transcribe={"dialogues": 7})) == 7


@pytest.mark.parametrize(
    "body, where, what",
    [
        ("sources:\n  - kind: demo\ntrain:\n  lr: -1\n", None, "lr"),
        ("sources:\n  - kind: cpsycound\n", 2, "needs a path"),
        ("sources:\n  - kind: demo\nsplit:\n  tset: 3\n", 4, "tset"),
        ("sources: [\n", None, "invalid YAML"),
        ("sources:\n  - kind: demo\ngeneration:\n  preset: nosuch\n", None, "unknown generation preset"),
        ("sources:\n  - kind: demo\ngeneration:\n  strategies: [CR, XX]\n", 4, "'XX' is not a MITI code"),
        ("sources:\n  - kind: demo\nsplit:\n  strategy: true\n", 3, "need the codes of the replies"),
    ],
)
def test_config_errors_are_located(tmp_path, body, where, what):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        load_config(p)
    assert what in str(e.value)
    if where:
        assert str(e.value).startswith(f"{p}:{where}:")


def test_stage_runner_skips_up_to_date_and_reruns_on_change(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out.txt"
    calls = []

    def make(params):
        def run():
            calls.append(params)
            out.write_text(src.read_text() * 2)

        return Stage("double", run, [out], inputs=[src], params=params)

    runner = StageRunner(tmp_path / "run")
    assert not runner(make({"k": 1})).skipped
    assert runner(make({"k": 1})).skipped  # same settings and inputs
    assert not runner(make({"k": 2})).skipped  # settings changed
    src.write_text("b")
    assert not runner(make({"k": 2})).skipped  # input changed
    out.unlink()
    assert not runner(make({"k": 2})).skipped  # output missing
    assert len(calls) == 4 and out.read_text() == "bb"


def test_stage_failure_records_nothing(tmp_path):
    def boom():
        raise RuntimeError("crash")

    runner = StageRunner(tmp_path)
    with pytest.raises(RuntimeError):
        runner(Stage("x", boom, [tmp_path / "o"]))
    assert not (tmp_path / ".stages" / "x.json").exists()


@pytest.mark.integration
def test_tiny_experiment_end_to_end_and_resume(tmp_path):
    """The whole pipeline on the embedded model, cut to a few samples and steps."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\nsources:\n  - kind: demo\n    style: mi\n"
        "split: {train: 4, test: 1, seed: 3}\n"
        "models:\n  - name: gemma-3-270m\n    backend: hf\n"
        "train: {max_steps: 1, max_length: 256, grad_accum: 1, on_overflow: skip}\n"
        "generation: {max_new_tokens: 4, limit: 3, batch_size: 4}\n"
        "miti: {enabled: false}\n"
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mi_llm", "run", str(cfg), "--run-dir", str(run)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert {row["system"] for row in summary["automatic"]} == {"base", "finetuned"}
    assert all(row["n"] == 3 for row in summary["automatic"])
    assert (run / "report" / "index.html").is_file()
    assert (run / "models" / "gemma-3-270m" / "adapter" / "adapter_config.json").is_file()
    # a second run finds every stage up to date
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "0 stage(s) ran" in r2.stderr


class OneCodeCoder:
    """Codes every counselor turn as one complex reflection and every client turn as change
    talk (a stand-in for the MITI coder, with the old one-argument signature)."""

    def code_dialogues(self, dialogues):
        from mi_llm.corpus.schema import Utterance

        return [
            d.model_copy(
                update={
                    "turns": [
                        t.model_copy(update={"codes": [Utterance(text=t.text, code="CR")]})
                        if t.role == "counselor"
                        else t.model_copy(update={"talk": "change"})
                        for t in d.turns
                    ]
                }
            )
            for d in dialogues
        ]


def test_miti_stage_writes_the_one_schema_the_report_reads(tmp_path, monkeypatch):
    """The pipeline's miti stage codes and scores through mi_llm.miti.results; the report reads
    miti.json through its schema; a run's miti.json from before it makes the stage rerun."""
    import mi_llm.miti.coders as coders
    from mi_llm.config import ExperimentConfig
    from mi_llm.io import write_json
    from mi_llm.layout import RunPaths
    from mi_llm.miti.results import read_miti_scores
    from mi_llm.pipeline import data_stages, miti_stage, report_stage
    from mi_llm.report.collect import collect
    from mi_llm.stages import fingerprint

    monkeypatch.setattr(coders, "load_coder", lambda name: OneCodeCoder())
    cfg = ExperimentConfig(
        name="m",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        split={"train": 2, "test": 2, "seed": 1},
        train={"enabled": False},
    )
    paths = RunPaths(tmp_path / "run")
    runner = StageRunner(paths.root)
    for stage in data_stages(cfg, paths):
        runner(stage)
    ((label, key, system),) = cfg.systems()
    write_strategy_predictions(cfg, paths, {})

    stage = miti_stage(cfg, paths)
    assert not runner(stage).skipped
    scores = read_miti_scores(paths.miti_scores)
    assert list(scores.systems) == ["reference", "reference (human codes)", label]
    assert scores.coder == "default" and scores.schema_version == 2
    mine = scores.systems[label]
    assert mine.n_sessions == 2 and mine.files == [str(paths.miti_coded(label))]
    assert mine.pooled.pct_cr == 1.0 and mine.aggregate["r_q"].mean is None  # every reply a CR, no question
    # the test rounds' clients never heard the model: their talk is coded for the reference only
    assert mine.pooled.client_talk is None and scores.systems["reference"].pooled.client_talk.change > 0
    human = scores.systems["reference (human codes)"]
    assert human.files == [str(paths.miti_coded("reference (human codes)"))] and human.pooled.pct_cr != 1.0
    report = collect(cfg, paths)
    assert report.miti_aggregate[label]["pct_cr"]["mean"] == 1.0 and "level" not in report.miti_aggregate[label]["mia"]
    assert report.miti_sessions[label][0]["counts"]["CR"] >= 1

    # A run from before the one schema: its miti.json has no version, its fingerprint no schema version.
    write_json(paths.miti_scores, {"coder": "default", "systems": {}})
    with pytest.raises(
        InputError, match=r"miti.json: MITI scores in an older format \(no schema_version.*re-run the miti stage"
    ):
        collect(cfg, paths)
    write_json(paths.stage_state("miti"), {"fingerprint": fingerprint(cfg.miti.model_dump(), stage.inputs)})
    assert not runner(miti_stage(cfg, paths)).skipped and read_miti_scores(paths.miti_scores) == scores
    assert runner(miti_stage(cfg, paths)).skipped
    assert not runner(report_stage(cfg, paths)).skipped


def write_strategy_predictions(cfg, paths, strategy_fields: dict[str, dict]) -> None:
    """The same reply to every test round for each system (with its strategy fields), scored."""
    from mi_llm.evaluate.metrics import evaluate_file
    from mi_llm.io import iter_jsonl, write_jsonl

    for _, key, system in cfg.systems():
        preds = [
            {
                "sample_id": s["sample_id"],
                "dialogue_id": s["dialogue_id"],
                "round": s["round"],
                "language": s["language"],
                "prediction": "So you want to change.",
                "reference": s["response"],
                **strategy_fields.get(system, {}),
            }
            for _, s in iter_jsonl(paths.build.test_samples)
        ]
        write_jsonl(paths.predictions(key, system), preds)
        evaluate_file(paths.predictions(key, system), paths.metrics(key, system))


def test_strategy_run_reports_code_following(tmp_path, monkeypatch):
    """With generation.strategy, the samples carry codes, the fine-tuned predictions their
    code, and the report a code-following table from the miti stage's coded sessions."""
    import mi_llm.miti.coders as coders
    from mi_llm.config import ExperimentConfig
    from mi_llm.io import iter_jsonl
    from mi_llm.layout import RunPaths
    from mi_llm.pipeline import data_stages, following_stages, miti_stage, report_stage

    monkeypatch.setattr(coders, "load_coder", lambda name: OneCodeCoder())
    cfg = ExperimentConfig(
        name="s",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        split={"train": 2, "test": 2, "seed": 1, "codes": "corpus", "strategy": True},
        generation={"strategy": "Q", "strategies": ["CR"]},
    )
    assert [s for _, _, s in cfg.systems()] == ["base", "finetuned", "finetuned-CR"]
    paths = RunPaths(tmp_path / "run")
    runner = StageRunner(paths.root)
    for stage in data_stages(cfg, paths):
        runner(stage)
    samples = [s for _, s in iter_jsonl(paths.build.train_samples)]
    assert all("code" in s and s["strategy"] for s in samples if s.get("code"))
    write_strategy_predictions(
        cfg,
        paths,
        {
            "finetuned": {"strategy": "Q", "requested": "Q", "code": "Q"},
            "finetuned-CR": {"strategy": "CR", "requested": "CR", "code": "CR"},
        },
    )
    runner(miti_stage(cfg, paths))
    following, steered = following_stages(cfg, paths)
    assert not runner(following).skipped and not runner(steered).skipped
    result = json.loads(following.outputs[0].read_text())
    assert json.loads(steered.outputs[0].read_text())["by_code"]["CR"]["rate"] == 1.0
    # the stand-in coder hears every reply as a complex reflection: asked Q, never followed
    assert result["by_code"]["Q"]["rate"] == 0.0 and result["heard"]["Q"] == {"CR": result["all"]["asked"]}
    runner(report_stage(cfg, paths))
    summary = json.loads(paths.report.summary.read_text())
    assert summary["code_following"]["gemma-3-270m finetuned"]["strategy"] == "Q"
    assert {r["system"] for r in summary["automatic"]} == {"base", "finetuned", "finetuned-CR"}
    assert 'id="following-table"' in paths.report.index.read_text()


class DemoTrainedCoder(OneCodeCoder):
    """A coder whose training data included the bundled demo corpus (as the shipped one's)."""

    info = {"data": [{"kind": "annomi"}, {"kind": "demo"}]}


def test_miti_stage_does_not_code_the_reference_in_sample(tmp_path, monkeypatch):
    """The shipped coder learned from the bundled demo corpus, test dialogues included: its codes
    of the demo's reference replies would be in-sample, so that row is left out (the human
    codes are still scored); a coder trained elsewhere still codes it."""
    import mi_llm.miti.coders as coders
    from mi_llm.config import ExperimentConfig
    from mi_llm.io import iter_jsonl, write_jsonl
    from mi_llm.layout import RunPaths
    from mi_llm.miti.results import read_miti_scores
    from mi_llm.pipeline import coder_trained_on, data_stages, miti_stage

    cfg = ExperimentConfig(
        name="m",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        split={"train": 2, "test": 2, "seed": 1},
        train={"enabled": False},
    )
    assert coder_trained_on(DemoTrainedCoder(), cfg.sources) == ["demo"]
    assert coder_trained_on(OneCodeCoder(), cfg.sources) == []
    held_apart = DemoTrainedCoder()
    held_apart.info = {**DemoTrainedCoder.info, "excluded": {"ids": ["d1", "d2", "d3"]}}  # train-coder --exclude
    assert coder_trained_on(held_apart, cfg.sources, ["d1", "d2"]) == []  # its test dialogues were held out
    assert coder_trained_on(held_apart, cfg.sources, ["d1", "d9"]) == ["demo"]  # d9 was not
    paths = RunPaths(tmp_path / "run")
    runner = StageRunner(paths.root)
    for stage in data_stages(cfg, paths):
        runner(stage)
    ((label, key, system),) = cfg.systems()
    preds = [
        {"sample_id": s["sample_id"], "dialogue_id": s["dialogue_id"], "round": s["round"], "prediction": "Yes."}
        for _, s in iter_jsonl(paths.build.test_samples)
    ]
    write_jsonl(paths.predictions(key, system), preds)
    monkeypatch.setattr(coders, "load_coder", lambda name: DemoTrainedCoder())
    runner(miti_stage(cfg, paths))
    assert list(read_miti_scores(paths.miti_scores).systems) == ["reference (human codes)", label]


def test_a_model_that_writes_no_tag_is_a_finding_not_an_error(tmp_path, monkeypatch):
    """`strategy: model` after too little training: no reply opens with a tag. The
    code-following stage records 0 of N tagged instead of stopping the run."""
    import mi_llm.miti.coders as coders
    from mi_llm.config import ExperimentConfig
    from mi_llm.io import iter_jsonl
    from mi_llm.layout import RunPaths
    from mi_llm.pipeline import data_stages, following_stages, miti_stage

    monkeypatch.setattr(coders, "load_coder", lambda name: OneCodeCoder())
    cfg = ExperimentConfig(
        name="s",
        sources=[{"kind": "demo", "language": "en", "style": "mi"}],
        split={"train": 2, "test": 2, "seed": 1, "codes": "corpus", "strategy": True},
        generation={"strategy": "model"},
    )
    paths = RunPaths(tmp_path / "run")
    runner = StageRunner(paths.root)
    for stage in data_stages(cfg, paths):
        runner(stage)
    write_strategy_predictions(cfg, paths, {"finetuned": {"strategy": "model", "requested": None, "code": None}})
    runner(miti_stage(cfg, paths))
    [following] = following_stages(cfg, paths)
    assert not runner(following).skipped
    result = json.loads(following.outputs[0].read_text())
    n = sum(1 for _ in iter_jsonl(paths.build.test_samples))
    assert n > 0 and (result["replies"], result["with_code"]) == (n, 0) and result["all"]["rate"] is None


def test_a_run_directory_moved_elsewhere_stays_up_to_date(tmp_path):
    """Inputs inside the run directory are fingerprinted by their place in it: a copied or
    moved run resumes instead of redoing every stage; a stage recorded with the absolute
    names of before is up to date too."""
    import shutil

    from mi_llm.stages import fingerprint

    run = tmp_path / "a" / "run"
    (run / "build").mkdir(parents=True)
    (run / "build" / "samples.jsonl").write_text("x")
    calls = []

    def stage(root):
        out = root / "out.txt"
        return Stage(
            "s", lambda: (calls.append(root), out.write_text("y")), [out], inputs=[root / "build" / "samples.jsonl"]
        )

    assert not StageRunner(run)(stage(run)).skipped
    moved = tmp_path / "b" / "run"
    shutil.copytree(run, moved)
    assert StageRunner(moved)(stage(moved)).skipped
    (moved / "build" / "samples.jsonl").write_text("changed")
    assert not StageRunner(moved)(stage(moved)).skipped  # content still counts
    # recorded before names were relative: absolute names, same directory
    legacy = stage(run)
    write_json(RunPaths(run).stage_state("s"), {"fingerprint": fingerprint(legacy.params, legacy.inputs)})
    assert StageRunner(run)(legacy).skipped
    assert calls == [run, moved]


def test_training_resumes_in_a_moved_run_directory_but_not_on_other_data(tmp_path):
    from mi_llm.errors import MiLlmError
    from mi_llm.train.config import TrainConfig, check_resume_compatible

    def options(root, data="build"):
        return TrainConfig(model="m", data=str(root / data), output=str(root / "models" / "m" / "adapter"))

    saved = options(tmp_path / "a").model_dump()
    check_resume_compatible(saved, options(tmp_path / "b"), tmp_path / "train_config.json")
    with pytest.raises(MiLlmError, match=r"train_config.json: --resume with other options .*data"):
        check_resume_compatible(saved, options(tmp_path / "b", "other"), tmp_path / "train_config.json")


def test_a_training_stage_that_reruns_starts_over_unless_it_can_resume(tmp_path):
    """Changed settings (or data) rerun the train stage: a finished run, or one with other
    options, is cleared instead of stopping the run; an interrupted run with the same
    options keeps its checkpoint."""
    from mi_llm.train.checkpoints import STATE_FILE, checkpoints_dir
    from mi_llm.train.config import TrainConfig
    from mi_llm.train.trainer import clear_unless_resumable

    out = tmp_path / "adapter"

    def options(**kw):
        return TrainConfig(model="m", data=str(tmp_path / "build"), output=str(out), **kw)

    def trained(cfg, interrupted=False):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", {"config": cfg.model_dump(mode="json")})
        (out / "adapter_model.safetensors").write_text("w")
        if interrupted:
            (checkpoints_dir(out) / "step-2").mkdir(parents=True)
            write_json(checkpoints_dir(out) / "step-2" / STATE_FILE, {"step": 2})

    assert not clear_unless_resumable(options())  # nothing there
    trained(options(max_steps=16), interrupted=True)
    assert not clear_unless_resumable(options(max_steps=16)) and out.is_dir()  # resumes
    assert clear_unless_resumable(options(max_steps=20)) and not out.exists()  # other options
    trained(options(max_steps=16))
    assert clear_unless_resumable(options(max_steps=16)) and not out.exists()  # finished: new data


def run_with_adapter(tmp_path, cfg, split):
    """A run directory with a one-line samples file of `split` and a fine-tuned adapter's
    weights file ("sft 1"): what the prefs and predict stages read."""
    paths = RunPaths(tmp_path / "run")
    m = cfg.models[0]
    paths.build.root.mkdir(parents=True)
    paths.build.samples(split).write_text("{}\n")
    paths.adapter(m.key).root.mkdir(parents=True)
    paths.adapter(m.key).weights.write_text("sft 1")
    return paths, m


def test_the_prefs_stage_resamples_when_the_adapter_changed(tmp_path, monkeypatch):
    """Replies kept from an interrupted prefs stage are reused only if sampled from the same
    adapter weights, training rounds and sampling settings."""
    import mi_llm.prefs.build as build
    from mi_llm.config import ExperimentConfig
    from mi_llm.pipeline import prefs_stage
    from mi_llm.prefs.build import candidates_file, settings_file

    cfg = ExperimentConfig.model_validate({"sources": [{"kind": "demo"}], "prefs": {"enabled": True, "coder": "x"}})
    paths, m = run_with_adapter(tmp_path, cfg, "train")
    monkeypatch.setattr(build, "build_prefs", lambda *a, **k: None)
    out = paths.prefs(m.key)

    def kept_after_run(config=cfg) -> bool:
        candidates_file(out).write_text('{"sample_id": "a", "replies": []}\n')
        settings_file(out).write_text("{}")
        prefs_stage(config, paths, m).run()
        return candidates_file(out).exists() and settings_file(out).exists()

    assert not kept_after_run()  # no record of what they were sampled from
    assert kept_after_run()  # an interrupted stage of the same inputs resumes
    other_scoring = ExperimentConfig.model_validate(
        {"sources": [{"kind": "demo"}], "prefs": {"enabled": True, "coder": "y", "limit": 3, "min_margin": 1.0}}
    )
    assert kept_after_run(other_scoring)  # scoring, coder and limit do not change the replies
    paths.adapter(m.key).weights.write_text("sft 2")  # retrained: same path, other weights
    assert not kept_after_run()
    hotter = ExperimentConfig.model_validate(
        {"sources": [{"kind": "demo"}], "prefs": {"enabled": True, "coder": "x", "temperature": 1.3}}
    )
    assert kept_after_run() and not kept_after_run(hotter)


def test_a_predict_stage_that_reruns_for_a_retrained_adapter_does_not_resume_old_predictions(tmp_path, monkeypatch):
    from mi_llm.config import ExperimentConfig
    from mi_llm.evaluate import predict as predict_module
    from mi_llm.pipeline import model_stages

    overwrites = []

    class Recorder:
        def predict(self, data, output, config, **kw):
            overwrites.append(kw["overwrite"])

    monkeypatch.setattr(predict_module.PredictBackend, "choose", staticmethod(lambda *a, **k: Recorder()))
    cfg = ExperimentConfig.model_validate({"sources": [{"kind": "demo"}]})
    paths, m = run_with_adapter(tmp_path, cfg, "test")
    stage = next(s for s in model_stages(cfg, paths, m) if s.name.endswith("predict-finetuned"))
    stage.run()  # nothing recorded: start over
    stage.run()  # interrupted, same adapter: resume
    paths.adapter(m.key).weights.write_text("sft 2")
    stage.run()  # retrained: start over
    longer = ExperimentConfig.model_validate({"sources": [{"kind": "demo"}], "generation": {"max_new_tokens": 99}})
    next(s for s in model_stages(longer, paths, m) if s.name.endswith("predict-finetuned")).run()
    assert overwrites == [True, False, True, True]
