"""`mi-llm run CONFIG.yaml`: a whole experiment, stage by stage, into one run directory.

import -> (transcribe) -> build -> for each model: predict base -> train -> predict
fine-tuned -> (prefs -> dpo -> predict dpo) -> evaluate -> (simulate base and fine-tuned) ->
MITI code + score -> report. Each stage is skipped when its outputs are up to date with its
inputs and settings, so a crashed run resumes.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from mi_llm.build.strategy import Strategy
from mi_llm.config import HELD_APART_CODER, ExperimentConfig, ModelConfig, SourceConfig
from mi_llm.corpus.importers import source_files
from mi_llm.corpus.schema import Dialogue, read_dialogues, write_dialogues
from mi_llm.io import iter_jsonl, write_json
from mi_llm.layout import (
    MADE_FROM_SUFFIX,
    PREFERENCE_SYSTEM,
    AdapterPaths,
    RunPaths,
    SimulatePaths,
    beside,
)
from mi_llm.stages import Stage, StageRunner, fingerprints

log = logging.getLogger(__name__)

# The test dialogues scored with the codes they carry (a human coder's), beside the coder's.
HUMAN_REFERENCE = "reference (human codes)"


def import_sources(sources: list[SourceConfig]) -> tuple[list[Dialogue], dict[str, dict]]:
    from mi_llm.corpus.importers import import_source
    from mi_llm.corpus.normalize import NormalizeOptions

    dialogues: list[Dialogue] = []
    stats: dict[str, dict] = {}
    for i, src in enumerate(sources):
        got, st = import_source(src.kind, src.path, NormalizeOptions(), language=src.language, style=src.style)
        if src.limit:
            got = got[: src.limit]
        stats[f"{i}:{src.kind}"] = st.as_dict()
        dialogues += got
    return dialogues, stats


def built_dialogues(cfg: ExperimentConfig, paths: RunPaths) -> Path:
    """The dialogues the samples are built from: the MI rewrites when transcription is on."""
    return paths.mi_dialogues if cfg.transcribe.enabled else paths.dialogues


def dialogues_to_transcribe(cfg: ExperimentConfig) -> int | None:
    """How many dialogues the transcribe stage rewrites (None: all of them)."""
    if cfg.transcribe.dialogues is not None:
        return cfg.transcribe.dialogues
    train, test = cfg.split.train, cfg.split.test
    if train >= 1 and test >= 1:  # counts, not fractions
        return math.ceil((train + test) * 1.05)
    return None


def data_stages(cfg: ExperimentConfig, paths: RunPaths) -> list[Stage]:
    def do_import() -> None:
        dialogues, stats = import_sources(cfg.sources)
        write_dialogues(paths.dialogues, dialogues)
        write_json(paths.import_stats, stats)

    def do_transcribe() -> None:
        from mi_llm.transcribe.runner import transcribe_file

        t = cfg.transcribe
        source = paths.dialogues
        n = dialogues_to_transcribe(cfg)
        dialogues = read_dialogues(paths.dialogues) if n is not None else []
        if n is not None and n < len(dialogues):
            # Rewriting is the paid step: only as many dialogues as the split will use.
            keep = set(random.Random(cfg.split.seed).sample(range(len(dialogues)), n))
            write_dialogues(paths.to_transcribe, [d for i, d in enumerate(dialogues) if i in keep])
            log.info("rewriting %d of %d imported dialogues (seeded sample)", n, len(dialogues))
            source = paths.to_transcribe
        transcribe_file(source, paths.mi_dialogues, t.transcribe_config())

    built_from = built_dialogues(cfg, paths)

    def do_build() -> None:
        from mi_llm.build.stage import build

        build(
            [built_from],
            paths.build.root,
            train=cfg.split.train,
            test=cfg.split.test,
            seed=cfg.split.seed,
            history_budget=cfg.split.history_budget,
            tokenizer=cfg.split.tokenizer,
            export_mode=cfg.split.export_mode,
            codes=cfg.split.codes,
            coder=cfg.split.coder,
            strategy=cfg.split.strategy,
            augment_cr=cfg.split.augment_cr,
        )

    stages = [
        Stage(
            "import",
            do_import,
            [paths.dialogues, paths.import_stats],
            inputs=[p for s in cfg.sources for p in source_files(s.kind, s.path, s.language, s.style)],
            params=[s.model_dump() for s in cfg.sources],
        ),
    ]
    if cfg.transcribe.enabled:
        # Resumable by itself (append-only output, call cache): rerunning it continues.
        stages.append(
            Stage(
                "transcribe",
                do_transcribe,
                [paths.mi_dialogues],
                inputs=[paths.dialogues],
                params={
                    **cfg.transcribe.model_dump(mode="json"),
                    "n": dialogues_to_transcribe(cfg),
                    "seed": cfg.split.seed,
                },
            )
        )
    stages.append(
        Stage(
            "build",
            do_build,
            [paths.build.train_samples, paths.build.test_samples],
            inputs=[built_from],
            params=cfg.split.fingerprint(),
        )
    )
    return stages


def resumable(marker: Path, params: Any, inputs: Sequence[Path], root: Path) -> bool:
    """Whether what an interrupted run of a stage left (predictions, sampled replies, sessions)
    was made from these very settings and inputs, and may be resumed. A stage reruns when
    they changed (a retrained adapter keeps its path but not its weights): its output must
    then start over, not be resumed as if nothing had changed. Records them in `marker`."""
    made_from = fingerprints(params, inputs, root)  # (as now, as recorded before relative names)
    recorded = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") if marker.is_file() else None
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": made_from[0]})
    return recorded is not None and recorded in made_from


def system_adapter(paths: RunPaths, key: str, system: str) -> AdapterPaths | None:
    """The adapter a system's replies come from: none for the base model, the dpo stage's for
    the preference-trained one, the SFT adapter for the fine-tuned and strategy-steered ones
    (each with its strategy)."""
    if system == "base":
        return None
    return paths.preference_adapter(key) if system == PREFERENCE_SYSTEM else paths.adapter(key)


def policy_inputs(strategy: str | None) -> list[Path]:
    """A `policy:FILE` strategy's file, as a stage input: an edited policy reruns the stage."""
    return [Path(strategy.removeprefix("policy:"))] if strategy and strategy.startswith("policy:") else []


def model_stages(cfg: ExperimentConfig, paths: RunPaths, m: ModelConfig) -> list[Stage]:
    """predict base -> train -> predict fine-tuned (and once per `generation.strategies`) ->
    evaluate each, for one model."""
    key = m.key
    test_file = paths.build.test_samples
    adapter = paths.adapter(key)
    gen = cfg.generation

    def do_predict(system: str) -> None:
        from mi_llm.evaluate.predict import PredictBackend

        used = system_adapter(paths, key, system)
        adapter_dir = used.root if used else None
        chosen = PredictBackend.choose(m.backend, m.name, adapter_dir, m.backend_options, gen.batch_size)
        # a strategy steers the fine-tuned model only: the base model never learned the tags
        spec = cfg.strategy_of(system)
        strategy = Strategy.parse(spec, "strategy") if spec is not None else None
        output = paths.predictions(key, system)
        made_of = [test_file, *([used.weights] if used else []), *policy_inputs(spec)]
        same = resumable(beside(output, MADE_FROM_SUFFIX), {**gen_params, "strategy": spec}, made_of, paths.root)
        chosen.predict(
            test_file, output, cfg.generation_config(), limit=gen.limit, strategy=strategy, overwrite=not same
        )

    def do_train() -> None:
        from mi_llm.train.sft import train
        from mi_llm.train.trainer import clear_unless_resumable

        opts = cfg.train_options(m.name, str(paths.build.root), str(adapter.root))
        clear_unless_resumable(opts)  # the stage reruns: other settings or data start over
        result = train(opts, resume=True)
        if result.interrupted:
            raise KeyboardInterrupt

    def do_evaluate(system: str) -> None:
        from mi_llm.evaluate.metrics import evaluate_file

        evaluate_file(paths.predictions(key, system), paths.metrics(key, system))

    gen_params = {"model": m.model_dump(), "generation": gen.fingerprint()}
    stages = [
        Stage(
            f"{key}/predict-base",
            lambda: do_predict("base"),
            [paths.predictions(key, "base")],
            inputs=[test_file],
            params=gen_params,
        )
    ]
    systems = ["base"]
    if cfg.train_enabled:
        train_params = {"model": m.name, "train": cfg.train.given()}
        stages += [
            Stage(
                f"{key}/train", do_train, [adapter.peft_config], inputs=[paths.build.train_samples], params=train_params
            ),
            Stage(
                f"{key}/predict-finetuned",
                lambda: do_predict("finetuned"),
                [paths.predictions(key, "finetuned")],
                inputs=[test_file, adapter.weights, *policy_inputs(cfg.strategy_of("finetuned"))],
                params=gen_params,
            ),
        ]
        systems.append("finetuned")
        for _, _, steered in cfg.systems():
            if steered.startswith("finetuned-") and steered not in systems:
                stages.append(
                    Stage(
                        f"{key}/predict-{steered}",
                        lambda s=steered: do_predict(s),  # type: ignore[misc]
                        [paths.predictions(key, steered)],
                        inputs=[test_file, adapter.weights, *policy_inputs(cfg.strategy_of(steered))],
                        params=gen_params,
                    )
                )
                systems.append(steered)
    if cfg.prefs.enabled:
        stages.append(prefs_stage(cfg, paths, m))  # after pairs_coder_stage (run_experiment)
    if cfg.dpo_enabled:
        stages += dpo_stages(cfg, paths, m, lambda: do_predict("dpo"), gen_params)
        systems.append("dpo")
    for system in systems:
        stages.append(
            Stage(
                f"{key}/evaluate-{system}",
                lambda s=system: do_evaluate(s),  # type: ignore[misc]
                [paths.metrics(key, system)],
                inputs=[paths.predictions(key, system)],
            )
        )
    return stages


def simulate_backend_options(options: dict, sessions: int) -> dict:
    """The model's backend options for its simulated sessions: no more llama.cpp sequences
    than sessions (each sequence holds a whole context: 16 for 2 sessions is memory and load
    time for nothing)."""
    out = dict(options)
    if "parallel" in out:
        out["parallel"] = max(1, min(int(out["parallel"]), sessions))
    return out


def simulate_stages(cfg: ExperimentConfig, paths: RunPaths, m: ModelConfig) -> list[Stage]:
    """Whole sessions with simulated clients for the model's base and fine-tuned counselor (and
    the steered ones, `simulated_systems`): the same personas, seeds and client, so they differ
    only in the counselor."""
    from mi_llm.simulate.persona import bundled_persona_files

    personas = cfg.simulate.personas
    persona_files = bundled_persona_files() if personas.startswith("demo") else [Path(personas)]
    stages = []
    for system in [system for _, key, system in cfg.simulated_systems() if key == m.key]:
        adapter = system_adapter(paths, m.key, system)
        strategy = cfg.strategy_of(system)
        sim = paths.simulate(m.key, system)
        inputs = persona_files + ([adapter.weights, adapter.peft_config] if adapter else [])
        params: dict[str, Any] = {"simulate": cfg.simulate.fingerprint(), "model": m.model_dump(), "system": system}
        if strategy is not None:  # only when set: sessions from before strategies stay up to date
            params["strategy"] = strategy
            inputs += policy_inputs(strategy)

        def do_simulate(
            adapter: AdapterPaths | None = adapter,
            sim: SimulatePaths = sim,
            inputs: list[Path] = inputs,
            params: dict = params,
            strategy: str | None = strategy,
        ) -> None:
            from mi_llm.simulate.cards import load_personas
            from mi_llm.simulate.stage import run_simulate

            config = cfg.simulate.simulate_config(m.name, str(adapter.root) if adapter else None, m.backend, strategy)
            # Sessions already there are resumed only when they were made from these very
            # inputs (a crash); a changed adapter or setting starts the sessions over.
            same = resumable(sim.stage_marker, params, inputs, paths.root)
            run_simulate(
                config,
                load_personas(config.personas),
                sim.root,
                overwrite=not same,
                counselor_options=simulate_backend_options(m.backend_options, config.sessions),
            )

        stages.append(
            Stage(f"{m.key}/simulate-{system}", do_simulate, [sim.outcomes, sim.coded], inputs=inputs, params=params)
        )
    return stages


def pairs_coder_stage(cfg: ExperimentConfig, paths: RunPaths) -> Stage:
    """`prefs.coder: held-apart`: the coder that scores the preference pairs, trained in the run
    on the bundled demo codes without the run's test dialogues, with another recipe (n-grams,
    fixed settings: seconds) than the shipped coder that grades: the pairs are not chosen by
    the grader, and the grader's test dialogues never taught the pairs coder."""

    def do_train() -> None:
        from mi_llm.miti.coders import train_coder

        train_coder(paths.pairs_coder, quick=True, recipe="ngram", exclude=[paths.build.test_samples])

    return Stage(
        "pairs-coder",
        do_train,
        [paths.pairs_coder / "coder.json"],
        inputs=[paths.build.test_samples],
        params={"recipe": "ngram", "quick": True},
    )


# prefs settings that change how sampled replies are scored or how many rounds are used, not the replies
PREFS_SCORING_FIELDS = {"enabled", "limit", "coder", "min_margin", "degenerate_rejected", "score"}


def prefs_stage(cfg: ExperimentConfig, paths: RunPaths, m: ModelConfig) -> Stage:
    """Preference pairs sampled from the fine-tuned model on the training rounds, scored by
    `prefs.coder` (resumable inside: the sampled replies are kept)."""
    key = m.key
    adapter = paths.adapter(key)
    own_coder = cfg.prefs.coder == HELD_APART_CODER

    params = {"model": m.model_dump(), "prefs": cfg.prefs.model_dump(mode="json")}
    inputs = [paths.build.train_samples, adapter.weights]
    # What the sampled replies depend on (not the scoring, the coder or the limit): replies kept
    # from an interrupted run are reused only when sampled from these very inputs; a retrained
    # adapter has the same path but other weights, so its old replies must go.
    sampling = {**params, "prefs": cfg.prefs.model_dump(mode="json", exclude=PREFS_SCORING_FIELDS)}

    def do_prefs() -> None:
        from mi_llm.evaluate.predict import resolve_backend
        from mi_llm.prefs.build import build_prefs, candidates_file, settings_file

        output = paths.prefs(key)
        if not resumable(beside(output, MADE_FROM_SUFFIX), sampling, inputs, paths.root):
            for old in (candidates_file(output), settings_file(output)):
                old.unlink(missing_ok=True)
        backend = resolve_backend(m.backend)
        coder = str(paths.pairs_coder) if own_coder else None
        opts = cfg.prefs.prefs_config(m.name, str(adapter.root), backend, coder=coder)
        build_prefs(opts, paths.build.train_samples, output, backend_options=dict(m.backend_options))

    return Stage(
        f"{key}/prefs",
        do_prefs,
        [paths.prefs(key)],
        inputs=inputs + ([paths.pairs_coder / "coder.json"] if own_coder else []),
        params=params,
    )


def dpo_stages(
    cfg: ExperimentConfig, paths: RunPaths, m: ModelConfig, predict: Callable[[], None], gen_params: dict
) -> list[Stage]:
    """DPO (or KTO) of the fine-tuned adapter on its pairs, then the dpo system's predictions."""
    key = m.key
    out = paths.preference_adapter(key)

    def do_dpo() -> None:
        from mi_llm.train.preference import train_preferences
        from mi_llm.train.trainer import clear_unless_resumable

        opts = cfg.dpo.train_config(m.name, str(paths.prefs(key)), str(paths.adapter(key).root), str(out.root))
        clear_unless_resumable(opts)
        if train_preferences(opts, resume=True).interrupted:
            raise KeyboardInterrupt

    return [
        Stage(
            f"{key}/dpo",
            do_dpo,
            [out.peft_config],
            inputs=[paths.prefs(key), paths.adapter(key).weights],
            params={"model": m.name, "dpo": cfg.dpo.given()},
        ),
        Stage(
            f"{key}/predict-dpo",
            predict,
            [paths.predictions(key, "dpo")],
            inputs=[paths.build.test_samples, out.weights],
            params=gen_params,
        ),
    ]


def miti_stage(cfg: ExperimentConfig, paths: RunPaths) -> Stage:
    """Code every system's replies in their test dialogues with one coder, and score them.

    The reference dialogues are coded by the same coder (comparable across systems) unless
    the coder was trained on the source they come from (the shipped coder on the bundled demo
    corpus): that would be in-sample. When they carry human codes, those are scored too, as
    "reference (human codes)".
    """
    from mi_llm.miti.results import MITI_SCORES_VERSION

    test_file = paths.build.test_samples
    systems = cfg.systems()

    def do_miti() -> None:
        from mi_llm.build.samples import read_samples
        from mi_llm.miti.coders import load_coder
        from mi_llm.miti.results import code_and_score, write_miti_scores
        from mi_llm.miti.system_sessions import read_predictions_by_round, system_sessions

        test_ids = {s.dialogue_id for s in read_samples(test_file)}
        test = [d for d in read_dialogues(built_dialogues(cfg, paths)) if d.id in test_ids]
        human = [
            d for d in test if d.miti_globals and all(t.codes is not None for t in d.turns if t.role == "counselor")
        ]
        plain_ref = [
            d.model_copy(
                update={"turns": [t.model_copy(update={"codes": None}) for t in d.turns], "miti_globals": None}
            )
            for d in test
        ]
        coder = load_coder(cfg.miti.coder)
        seen = coder_trained_on(coder, cfg.sources, test_ids)
        sessions: dict[str, list[Dialogue]] = {}
        if seen:
            # The coder learned from these very replies: its codes of them would be in-sample.
            log.info(
                "miti: the reference replies are not coded automatically: coder %s was trained on the %s "
                "data these test dialogues come from (in-sample); their human codes are scored where present",
                cfg.miti.coder,
                ", ".join(seen),
            )
        else:
            sessions["reference"] = plain_ref
        if human:
            sessions[HUMAN_REFERENCE] = human
        for label, key, system in systems:
            sessions[label] = system_sessions(test, read_predictions_by_round(paths.predictions(key, system)), label)
        scores = code_and_score(
            sessions,
            coder,
            coder_name=str(cfg.miti.coder),
            keep_codes={HUMAN_REFERENCE},
            clients_not_answering={label for label, _, _ in systems},
            coded_file=paths.miti_coded,
        )
        write_miti_scores(paths.miti_scores, scores)

    inputs = [test_file, built_dialogues(cfg, paths)] + [paths.predictions(k, s) for _, k, s in systems]
    # The schema version is a setting: a run from before a schema change rewrites miti.json.
    params = {
        **cfg.miti.model_dump(),
        "miti_scores_version": MITI_SCORES_VERSION,
        "reference": "out-of-sample only",
        "client_talk": "not for systems' replies in test rounds",  # their clients never heard them
    }
    return Stage("miti", do_miti, [paths.miti_scores], inputs=inputs, params=params)


def following_stages(cfg: ExperimentConfig, paths: RunPaths) -> list[Stage]:
    """For each system predicted with a strategy: how often the MITI stage's coder heard the
    code each reply was asked for (or wrote), from the coded sessions it wrote."""
    if not cfg.miti.enabled:
        return []
    stages = []
    for label, key, system in cfg.systems():
        if cfg.strategy_of(system) is None:
            continue

        def do_following(label: str = label, key: str = key, system: str = system) -> None:
            from mi_llm.miti.following import following_of_predictions, heard_by_round, strategy_records

            predictions = paths.predictions(key, system)
            records = strategy_records(predictions, required=False)
            result = following_of_predictions(records, heard_by_round(read_dialogues(paths.miti_coded(label))))
            result["coder"] = str(cfg.miti.coder)
            # with `model`, how many replies opened with a tag at all is a figure of its own
            result["replies"] = sum(1 for _ in iter_jsonl(predictions))
            result["with_code"] = len(records)
            write_json(paths.code_following(key, system), result)

        stages.append(
            Stage(
                f"{key}/code-following-{system}",
                do_following,
                [paths.code_following(key, system)],
                inputs=[paths.predictions(key, system), paths.miti_scores],
                params={"coder": cfg.miti.coder},
            )
        )
    return stages


def coder_trained_on(coder: object, sources: list[SourceConfig], test_ids: Collection[str] = ()) -> list[str]:
    """The experiment's source kinds that the coder's training data came from (its
    `info["data"]` kinds: e.g. the shipped coder's `demo` and `annomi`); none when every
    test dialogue was held out of its training (`train-coder --exclude`: `info["excluded"]["ids"]`)."""
    info = getattr(coder, "info", None) or {}
    held_out = set((info.get("excluded") or {}).get("ids") or ())
    if test_ids and set(test_ids) <= held_out:
        return []
    trained = {d.get("kind") for d in info.get("data", []) if isinstance(d, dict)}
    return sorted({s.kind for s in sources} & trained)


def report_stage(cfg: ExperimentConfig, paths: RunPaths) -> Stage:
    from mi_llm.report.collect import collect

    systems = cfg.systems()
    inputs = [paths.build.test_samples]
    inputs += [paths.metrics(k, s) for _, k, s in systems] + [paths.predictions(k, s) for _, k, s in systems]
    if cfg.miti.enabled:
        inputs.append(paths.miti_scores)
    if cfg.train_enabled:
        inputs += [paths.adapter(m.key).train_log for m in cfg.models]
    inputs += [p for s in following_stages(cfg, paths) for p in s.outputs]
    for _, k, s in cfg.simulated_systems():
        inputs += [paths.simulate(k, s).outcomes, paths.simulate(k, s).coded]

    def do_report() -> None:
        from mi_llm.report import write_report

        write_report(collect(cfg, paths), paths.report.root)

    return Stage(
        "report", do_report, [paths.report.index, paths.report.summary], inputs=inputs, params={"name": cfg.name}
    )


def run_experiment(
    cfg: ExperimentConfig, run_dir: Path, force: bool = False, config_path: Path | None = None
) -> StageRunner:
    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    write_json(paths.config, cfg.model_dump(mode="json"))
    runner = StageRunner(paths.root, force=force)
    stages = data_stages(cfg, paths)
    if cfg.prefs.enabled and cfg.prefs.coder == HELD_APART_CODER:
        stages.append(pairs_coder_stage(cfg, paths))
    for m in cfg.models:
        stages += model_stages(cfg, paths, m)
        if cfg.simulate.enabled:
            stages += simulate_stages(cfg, paths, m)
    if cfg.miti.enabled:
        stages.append(miti_stage(cfg, paths))
    stages += following_stages(cfg, paths)
    stages.append(report_stage(cfg, paths))
    for stage in stages:
        runner(stage)
    return runner


def print_summary(runner: StageRunner, run_dir: Path, seconds: float) -> None:
    """The key table at the end of a run: Table 1 figures and the MITI headline scores."""
    import json

    from rich.table import Table

    from mi_llm.console import console

    report = RunPaths(run_dir).report
    summary = json.loads(report.summary.read_text(encoding="utf-8"))
    t = Table(title=f"{summary['name']}: automatic evaluation (paper definitions)")
    for col in ("model", "lang", "system", "pairs", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"):
        t.add_column(col, justify="right" if col not in ("model", "lang", "system") else "left")
    for r in summary["automatic"]:
        sc = r["scores"]
        t.add_row(
            r["model"],
            r["language"],
            r["system"],
            str(r["n"]),
            *(f"{sc.get(k, float('nan')):.2f}" for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")),
        )
    console.print(t)
    if summary.get("miti"):
        m = Table(title="MITI 4.2.1 (automatic coder; mean per session)")
        for col in ("system", "sessions", "R:Q", "%CR", "MI-adherent ratio", "technical", "relational"):
            m.add_column(col)

        def fmt(agg: dict, key: str) -> str:
            v = agg.get(key, {}).get("mean")
            return "n/a" if v is None else f"{v:.2f}"

        for system, agg in summary["miti"].items():
            n = agg.get("r_q", {}).get("n", 0) + agg.get("r_q", {}).get("missing", 0)
            m.add_row(
                system,
                str(n),
                *(fmt(agg, k) for k in ("r_q", "pct_cr", "mi_adherent_ratio", "technical", "relational")),
            )
        console.print(m)
    if summary.get("simulate"):
        from mi_llm.simulate.aggregate import OUTCOME_KEYS
        from mi_llm.simulate.references import format_ci

        shown = ("success", "r_q", "pct_cr", "change_share", "rounds")
        labels = dict(OUTCOME_KEYS)
        s = Table(title="simulated sessions (mean [95% bootstrap CI] over sessions)")
        for col in ("counselor", "sessions", *(labels[k] for k in shown)):
            s.add_column(col)
        for counselor, sim in summary["simulate"].items():
            agg = sim.get("aggregate") or {}
            n = (sim.get("summary") or {}).get("sessions", 0)
            s.add_row(counselor, str(n), *(format_ci(agg[k]) if k in agg else "n/a" for k in shown))
        console.print(s)
    ran = sum(not r.skipped for r in runner.results)
    console.print(
        f"{ran} stage(s) ran, {len(runner.results) - ran} up to date; {seconds:.0f} s; report: {report.index}"
    )
