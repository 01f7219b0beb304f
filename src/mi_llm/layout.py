"""Where a run's files live: every path and file name of a run directory and of a build
folder, in one module. Stages, the report and the CLI ask it for paths; no other module
spells one of these names.

    runs/<name>/                          RunPaths(root)          default_run_dir(name)
      config.json                           .config
      data/dialogues.jsonl                  .dialogues
      data/import_stats.json                .import_stats
      data/to_transcribe.jsonl              .to_transcribe          the seeded sample to rewrite
      data/mi_dialogues.jsonl               .mi_dialogues           + transcribe's sidecars
      build/                                .build -> BuildPaths    (any `mi-llm data build -o DIR`)
        samples.{train,test}.jsonl            .samples(split)
        build.json                            .summary
        llamafactory/mi_{train,test}.json     .llamafactory, llamafactory_file(split)
        llamafactory/dataset_info.json        .dataset_info
        llamafactory/mi_llm_export.json       .export_meta
        openai/{train,test}.jsonl             .openai, openai_file(split)
      models/<key>/{base,finetuned}/        .predictions(key, system) (+ meta_file), .metrics(key, system)
      models/<key>/prefs.jsonl              .prefs(key): preference pairs (the prefs stage; + sidecars)
      coders/pairs/                         .pairs_coder: the held-apart pairs coder (`prefs.coder: held-apart`)
      models/<key>/dpo-adapter/, dpo/       .preference_adapter(key), the dpo system's predictions
      models/<key>/adapter/                 .adapter(key) -> AdapterPaths (any `mi-llm train --output DIR`)
        adapter_config.json, adapter_model.safetensors, train_config.json, train_log.jsonl
        lora-<arch>.gguf.cache                .llamacpp_lora(arch): the adapter as llama.cpp applies it
        checkpoints/                          mi_llm.train.checkpoints' own layout (until training ends)
      miti/<system>.coded.jsonl, miti.json  .miti_coded(label), .miti_scores
      simulate/<key>/{base,finetuned}/      .simulate(key, system) -> SimulatePaths (the simulate stage)
      report/index.html, *.png, summary.json  .report -> ReportPaths
      report/sessions/<counselor>/<id>.html   .session_page(counselor, id): simulated sessions' pages
      .stages/<stage>.json                  .stage_state(stage)

    any `mi-llm simulate -o DIR`          SimulatePaths(root)
      sessions.jsonl, sessions.failed.jsonl, outcomes.json   .sessions, .failed, .outcomes
      sessions.coded.jsonl                  .coded: the sessions as outcomes.json coded them
      report.html, sessions/<id>.html, *.png  .report, .session_page(id), .figure(name)
      .stage.json                           .stage_marker: the run's simulate stage fingerprint

<key> is a model's label (or name) with "/" replaced (mi_llm.config.ModelConfig.key).
Sidecars sit beside the file they describe, named `<file><suffix>` (beside()).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- names

RUNS_DIR = "runs"
CONFIG = "config.json"
DATA_DIR = "data"
DIALOGUES = "dialogues.jsonl"
IMPORT_STATS = "import_stats.json"
TO_TRANSCRIBE = "to_transcribe.jsonl"
MI_DIALOGUES = "mi_dialogues.jsonl"
BUILD_DIR = "build"
MODELS_DIR = "models"
MITI_DIR = "miti"
REPORT_DIR = "report"
STAGES_DIR = ".stages"
CODERS_DIR = "coders"
PAIRS_CODER = "pairs"  # coders/pairs/: the coder a run trains to score its preference pairs

# A build folder.
SPLITS = ("train", "test")
TRAIN_SAMPLES = "samples.train.jsonl"
TEST_SAMPLES = "samples.test.jsonl"
BUILD_SUMMARY = "build.json"
LLAMAFACTORY_DIR = "llamafactory"
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's registry of datasets
EXPORT_META = "mi_llm_export.json"  # how our LLaMA-Factory export was made (mode, mask_history)
OPENAI_DIR = "openai"

# models/<key>/: one folder per system, and the adapter.
SYSTEMS = ("base", "finetuned")
PREFERENCE_SYSTEM = "dpo"  # the system preference-trained from the fine-tuned one (the dpo stage)
PREFS = "prefs.jsonl"  # models/<key>/prefs.jsonl: preference pairs sampled from the fine-tuned model
PREFERENCE_ADAPTER_DIR = "dpo-adapter"


def steered_system(spec: str) -> str:
    """The system (folder) of the fine-tuned model predicted with one more strategy
    (`generation.strategies`): finetuned-CR, finetuned-model, finetuned-policy-<file stem>."""
    if spec.startswith("policy:"):
        spec = "policy-" + Path(spec.removeprefix("policy:")).stem
    return "finetuned-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", spec)


PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
CODE_FOLLOWING = "code_following.json"  # predict --strategy: how often the coder hears the asked code
ADAPTER_DIR = "adapter"
# A LoRA adapter folder: PEFT's two files, plus ours.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAIN_CONFIG = "train_config.json"
TRAIN_LOG = "train_log.jsonl"

SIMULATED_SESSIONS = "sessions.jsonl"  # mi-llm simulate: one finished session a line
SIMULATED_FAILED = "sessions.failed.jsonl"  # sessions an endpoint failed, with the reason
SIMULATION_OUTCOMES = "outcomes.json"
SIMULATED_CODED = "sessions.coded.jsonl"  # the sessions with the coders' codes and talk types
SIMULATION_REPORT = "report.html"
SESSION_PAGES_DIR = "sessions"  # one clinician-readable page per session
SIMULATE_DIR = "simulate"
STAGE_MARKER = ".stage.json"  # which inputs a pipeline stage's resumable output was made from
SIMULATION_FIDELITY = "fidelity.json"  # simulated clients beside real client talk
MITI_SCORES = "miti.json"
REPORT_INDEX = "index.html"
ABLATION_TABLE = "ablation.json"
ABLATION_INDEX = "ablation.html"
REPORT_SUMMARY = "summary.json"

# Sidecars: `<file><suffix>` beside the file.
META_SUFFIX = ".meta.json"  # predictions: the settings and backend they were made with
CODED_SUFFIX = ".coded.jsonl"  # coded sessions (miti/<system>.coded.jsonl; transcribe --quality)
MITI_SUFFIX = ".miti.json"  # transcribe --quality: MITI scores of the rewrites
CACHE_SUFFIX = ".cache.sqlite"  # transcribe: the call cache
FAILED_SUFFIX = ".failed.jsonl"  # transcribe: dialogues that could not be rewritten
SUMMARY_SUFFIX = ".summary.json"  # transcribe: the run's statistics
CANDIDATES_SUFFIX = ".candidates.jsonl"  # prefs build: the sampled replies, appended per batch (resume)
MADE_FROM_SUFFIX = ".made-from.json"  # a pipeline stage's resumable output: what it was made from
REF_LOGPS = "ref_logps.json"  # preference training: the reference model's log-probs, computed once


def samples_file(split: str) -> str:
    return f"samples.{split}.jsonl"


def llamafactory_dataset(split: str) -> str:
    """The dataset name a split is registered under in dataset_info.json."""
    return f"mi_{split}"


def llamafactory_file(split: str) -> str:
    return f"{llamafactory_dataset(split)}.json"


def openai_file(split: str) -> str:
    return f"{split}.jsonl"


def beside(path: Path, suffix: str) -> Path:
    """The sidecar `<path><suffix>` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + suffix)


def meta_file(predictions: Path) -> Path:
    """The settings sidecar of a predictions file."""
    return beside(predictions, META_SUFFIX)


def slug(label: str) -> str:
    """A label as one file-name-safe path part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.") or "_"


def default_run_dir(name: str) -> Path:
    return Path(RUNS_DIR) / name


# ---------------------------------------------------------------- folders


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))


class BuildPaths(_Folder):
    """A build folder: round samples, build.json and the exports."""

    def samples(self, split: str) -> Path:
        return self.root / samples_file(split)

    @property
    def train_samples(self) -> Path:
        return self.root / TRAIN_SAMPLES

    @property
    def test_samples(self) -> Path:
        return self.root / TEST_SAMPLES

    @property
    def summary(self) -> Path:
        return self.root / BUILD_SUMMARY

    @property
    def llamafactory(self) -> Path:
        return self.root / LLAMAFACTORY_DIR

    @property
    def dataset_info(self) -> Path:
        return self.llamafactory / DATASET_INFO

    @property
    def export_meta(self) -> Path:
        return self.llamafactory / EXPORT_META

    @property
    def openai(self) -> Path:
        return self.root / OPENAI_DIR


class AdapterPaths(_Folder):
    """A LoRA adapter folder, as `mi-llm train` writes it."""

    @property
    def peft_config(self) -> Path:
        return self.root / ADAPTER_CONFIG

    @property
    def weights(self) -> Path:
        return self.root / ADAPTER_WEIGHTS

    @property
    def train_config(self) -> Path:
        return self.root / TRAIN_CONFIG

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def ref_logps(self) -> Path:
        """Preference training: the reference log-probs of every pair (kept for --resume)."""
        return self.root / REF_LOGPS

    def llamacpp_lora(self, arch: str) -> Path:
        """The adapter converted for llama.cpp (mi_llm.llm.lora_gguf), cached beside it."""
        return self.root / f"lora-{arch}.gguf.cache"


class SimulatePaths(_Folder):
    """A `mi-llm simulate -o DIR` folder: finished sessions, failed ones, their outcomes."""

    @property
    def sessions(self) -> Path:
        return self.root / SIMULATED_SESSIONS

    @property
    def failed(self) -> Path:
        return self.root / SIMULATED_FAILED

    @property
    def outcomes(self) -> Path:
        return self.root / SIMULATION_OUTCOMES

    @property
    def coded(self) -> Path:
        return self.root / SIMULATED_CODED

    @property
    def report(self) -> Path:
        return self.root / SIMULATION_REPORT

    def session_page(self, session_id: str) -> Path:
        return self.root / SESSION_PAGES_DIR / f"{session_id}.html"

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    @property
    def stage_marker(self) -> Path:
        return self.root / STAGE_MARKER

    @property
    def fidelity(self) -> Path:
        return self.root / SIMULATION_FIDELITY


class ReportPaths(_Folder):
    """The report folder: index.html, its PNG figures, summary.json."""

    @property
    def index(self) -> Path:
        return self.root / REPORT_INDEX

    @property
    def summary(self) -> Path:
        return self.root / REPORT_SUMMARY

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def session_page(self, counselor: str, session_id: str) -> Path:
        """A simulated session's page; `counselor` is a report label ("<model key> <system>")."""
        return self.root / SESSION_PAGES_DIR / slug(counselor) / f"{session_id}.html"


class AblationPaths(_Folder):
    """An ablation's folder (`mi-llm run ABLATION.yaml`): one run directory per arm, and the
    table that compares them (ablation.json, ablation.html)."""

    def arm(self, label: str) -> RunPaths:
        return RunPaths(self.root / label)

    @property
    def table(self) -> Path:
        return self.root / ABLATION_TABLE

    @property
    def index(self) -> Path:
        return self.root / ABLATION_INDEX


class RunPaths(_Folder):
    """A run directory (`mi-llm run`): where every stage reads and writes."""

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def dialogues(self) -> Path:
        return self.data / DIALOGUES

    @property
    def import_stats(self) -> Path:
        return self.data / IMPORT_STATS

    @property
    def to_transcribe(self) -> Path:
        return self.data / TO_TRANSCRIBE

    @property
    def mi_dialogues(self) -> Path:
        return self.data / MI_DIALOGUES

    @property
    def build(self) -> BuildPaths:
        return BuildPaths(self.root / BUILD_DIR)

    def model_dir(self, key: str) -> Path:
        return self.root / MODELS_DIR / key

    def predictions(self, key: str, system: str) -> Path:
        return self.model_dir(key) / system / PREDICTIONS

    def metrics(self, key: str, system: str) -> Path:
        return self.model_dir(key) / system / METRICS

    def code_following(self, key: str, system: str) -> Path:
        return self.model_dir(key) / system / CODE_FOLLOWING

    def adapter(self, key: str) -> AdapterPaths:
        return AdapterPaths(self.model_dir(key) / ADAPTER_DIR)

    def simulate(self, key: str, system: str) -> SimulatePaths:
        """The simulate stage's sessions of one system (a model's base or fine-tuned counselor)."""
        return SimulatePaths(self.root / SIMULATE_DIR / key / system)

    def prefs(self, key: str) -> Path:
        """The prefs stage's pairs (+ its sidecars: candidates, meta, summary)."""
        return self.model_dir(key) / PREFS

    @property
    def pairs_coder(self) -> Path:
        """The coder the run trains for its preference pairs (`prefs.coder: held-apart`)."""
        return self.root / CODERS_DIR / PAIRS_CODER

    def preference_adapter(self, key: str) -> AdapterPaths:
        """The dpo stage's adapter (DPO or KTO from the fine-tuned adapter)."""
        return AdapterPaths(self.model_dir(key) / PREFERENCE_ADAPTER_DIR)

    @property
    def miti(self) -> Path:
        return self.root / MITI_DIR

    def miti_coded(self, label: str) -> Path:
        """The coded sessions of one system ("<model key> <system>", "reference", ...)."""
        return self.miti / f"{label.replace(' ', '_')}{CODED_SUFFIX}"

    @property
    def miti_scores(self) -> Path:
        return self.miti / MITI_SCORES

    @property
    def report(self) -> ReportPaths:
        return ReportPaths(self.root / REPORT_DIR)

    @property
    def stages(self) -> Path:
        return self.root / STAGES_DIR

    def stage_state(self, stage: str) -> Path:
        """The fingerprint file of a finished stage ("gemma/train" -> .stages/gemma__train.json)."""
        return self.stages / f"{stage.replace('/', '__')}.json"
