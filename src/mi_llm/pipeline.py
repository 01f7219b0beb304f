"""`mi-llm run CONFIG.yaml`: a whole experiment, stage by stage, into one run directory.

import -> (transcribe) -> build -> for each model: predict base -> train -> predict
fine-tuned -> evaluate -> MITI code + score -> report. Each stage is skipped when its
outputs are up to date with its inputs and settings, so a crashed run resumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mi_llm.config import ExperimentConfig, SourceConfig
from mi_llm.corpus.normalize import NormalizeStats
from mi_llm.corpus.schema import Dialogue, write_dialogues
from mi_llm.io import write_json
from mi_llm.stages import Stage, StageRunner

log = logging.getLogger(__name__)


@dataclass
class RunPaths:
    """Where every stage of a run writes: one documented layout."""

    root: Path

    @property
    def dialogues(self) -> Path:
        return self.root / "data" / "dialogues.jsonl"

    @property
    def import_stats(self) -> Path:
        return self.root / "data" / "import_stats.json"

    @property
    def mi_dialogues(self) -> Path:
        return self.root / "data" / "mi_dialogues.jsonl"

    @property
    def build(self) -> Path:
        return self.root / "build"

    def model_dir(self, key: str) -> Path:
        return self.root / "models" / key

    @property
    def report(self) -> Path:
        return self.root / "report"


def source_inputs(src: SourceConfig) -> list[Path]:
    if src.kind == "demo":
        from mi_llm.resources import demo_files

        return demo_files(src.language, src.style)
    return [Path(src.path)]  # type: ignore[arg-type]


def import_sources(sources: list[SourceConfig]) -> tuple[list[Dialogue], dict[str, dict]]:
    from mi_llm.corpus.importers import import_corpus
    from mi_llm.corpus.normalize import NormalizeOptions, normalize
    from mi_llm.resources import demo_dialogues

    dialogues: list[Dialogue] = []
    stats: dict[str, dict] = {}
    for i, src in enumerate(sources):
        if src.kind == "demo":
            st = NormalizeStats()
            got = [n for d in demo_dialogues(src.language, src.style) if (n := normalize(d, NormalizeOptions(), st))]
        else:
            got, st = import_corpus(src.kind, src.path, NormalizeOptions())  # type: ignore[arg-type]
            if src.language:
                got = [d.model_copy(update={"language": src.language}) for d in got]
        if src.limit:
            got = got[: src.limit]
        stats[f"{i}:{src.kind}"] = st.as_dict()
        dialogues += got
    return dialogues, stats


def data_stages(cfg: ExperimentConfig, paths: RunPaths) -> list[Stage]:
    def do_import() -> None:
        dialogues, stats = import_sources(cfg.sources)
        write_dialogues(paths.dialogues, dialogues)
        write_json(paths.import_stats, stats)

    def do_build() -> None:
        from mi_llm.build import build

        build(
            [paths.dialogues], paths.build, train=cfg.split.train, test=cfg.split.test, seed=cfg.split.seed,
            history_budget=cfg.split.history_budget, tokenizer=cfg.split.tokenizer,
        )

    return [
        Stage("import", do_import, [paths.dialogues, paths.import_stats],
              inputs=[p for s in cfg.sources for p in source_inputs(s)],
              params=[s.model_dump() for s in cfg.sources]),
        Stage("build", do_build, [paths.build / "samples.train.jsonl", paths.build / "samples.test.jsonl"],
              inputs=[paths.dialogues], params=cfg.split.model_dump()),
    ]


def run_experiment(cfg: ExperimentConfig, run_dir: Path, force: bool = False) -> StageRunner:
    paths = RunPaths(Path(run_dir))
    runner = StageRunner(paths.root, force=force)
    for stage in data_stages(cfg, paths):
        runner(stage)
    return runner
