"""Automatic MITI 4.2.1 coders: a trained one (offline, CPU) and an LLM-prompted one.

    coder = load_coder("default")            # or a coder folder, or "llm:openai:gpt-4o"
    codes = coder.code_utterances([{"text": "What brings you here?", "language": "en"}])
    coded = coder.code_dialogues(dialogues)   # Turn.codes and miti_globals filled

    train_coder("coders/en", [("annomi", "AnnoMI-full.csv")])   # + the bundled demo codes

`load_coder("default")` is the coder shipped in the package (resources/coders/default).

See docs/miti-coder.md for the label mappings, the validity table and how to reproduce it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.base import Coder, Item, Result
from mi_llm.miti.segment import split_utterances

log = logging.getLogger(__name__)

__all__ = ["Coder", "Item", "Result", "default_coder_dir", "load_coder", "split_utterances", "train_coder"]


def default_coder_dir() -> Path:
    """The coder shipped in the package (`mi_llm/resources/coders/default`): trained on AnnoMI
    and the bundled demo corpus, with its nested-CV validity in its coder.json."""
    from importlib import resources

    return Path(str(resources.files("mi_llm.resources").joinpath("coders", "default")))


def train_coder(
    out_dir: str | Path,
    sources: Iterable[tuple[str, str | Path]] = (),
    quick: bool = False,
    embeddings: bool | None = None,
    config: Any = None,
    progress: Any = None,
    recipe: str = "embed",
    encoder: str | None = None,
    weights: dict[str, float] | None = None,
    exclude: Iterable[str | Path] = (),
) -> Path:
    """Train a coder on the bundled demo codes plus `sources` [(kind, path)]; save it in `out_dir`.

    `recipe` (`trained.RECIPES`): `embed` (the default) reads the embedded model's frozen hidden
    states (the shipped default coder's recipe), `tuned` adapts blocks of it to the codes,
    `encoder` fine-tunes a small English sentence encoder (`encoder`: another one to fine-tune, a
    folder or hub id), `embed-encoder` multiplies `embed` by that encoder (LoRA), `ngram` none of
    these. `embed`, `embed-encoder` and `ngram` choose their hyper-parameters on inner folds of
    the examples first (`selection.py`). `quick` (n-grams, fixed
    hyper-parameters) trains in about a minute on a CPU with the shared data, seconds on the
    demo corpus alone; `embeddings=False` also means `ngram`. `weights` {source: weight} override the
    recipe's source weights (e.g. {"welivita": 1.0} to code written counseling text).
    `exclude`: dialogues / samples JSONL files whose dialogues are left out of every source and
    of the globals model (an experiment's test split: a grader that never saw it).
    """
    from mi_llm.miti.coders.labels import exclude_dialogues, load_sources, read_excluded_dialogues
    from mi_llm.miti.coders.trained import TrainedCoder, default_config
    from mi_llm.resources import demo_dialogues

    sources = list(sources)
    if progress:
        progress("loading", 0, 1)
    examples = load_sources(sources, demo=True)
    excluded: set[str] = set()
    for f in exclude:
        excluded |= read_excluded_dialogues(f)
    n_before = len(examples)
    examples = exclude_dialogues(examples, excluded)
    if progress:
        progress("loading", 1, 1)
    if config is None:
        config = default_config(quick=quick, embeddings=not quick if embeddings is None else embeddings, recipe=recipe)
        if encoder:
            if config.encoder is None:
                raise MiLlmError("--encoder goes with --recipe encoder or embed-encoder")
            config.encoder["model"] = encoder
    if weights:
        present = {e.source.casefold(): e.source for e in examples}
        for name, w in weights.items():
            if name.casefold() not in present:
                raise MiLlmError(
                    f"--weight {name}: no training utterances come from that source "
                    f"(sources here: {', '.join(sorted(present.values()))})"
                )
            config.source_weights[present[name.casefold()]] = w
    globals_dialogues = [d for d in demo_dialogues() if d.id not in excluded]
    coder = TrainedCoder.fit(examples, config, dialogues_for_globals=globals_dialogues, progress=progress)
    from mi_llm.miti.coders.labels import LICENCES

    counts = coder.info.get("sources", {})
    # file names only: a shipped coder must not carry the paths of the machine that trained it
    coder.info["data"] = [
        {"kind": k, "file": Path(p).name, "utterances": counts.get(k, 0), "licence": LICENCES.get(k, "see the source")}
        for k, p in sources
    ] + [
        {
            "kind": "demo",
            "file": "mi_llm/resources/demo (bundled)",
            "utterances": counts.get("demo", 0),
            "licence": LICENCES["demo"],
        }
    ]
    coder.info["quick"] = quick
    if excluded:  # the held-out dialogues, named by file (not by path) and counted
        coder.info["excluded"] = {
            "files": [Path(f).name for f in exclude],
            "dialogues": len(excluded),
            "utterances": n_before - len(examples),
            "ids": sorted(excluded),  # so a run can tell that its test dialogues are out-of-sample
        }
    out = coder.save(out_dir)
    log.info("trained a coder on %d utterances in %.0f s: %s", coder.info["n_examples"], coder.info["seconds"], out)
    return out


def load_coder(spec: str | Path = "default", **llm_opts: Any) -> Coder:
    """A coder from `default`, a trained coder folder, or `llm:<backend>:<model>`.

    `default` is the coder shipped in the package (`default_coder_dir()`): the same on every
    machine, whatever data the machine has. `llm_opts` (e.g. base_url) go to the LLM backend.
    """
    from mi_llm.miti.coders.trained import TrainedCoder

    s = str(spec)
    if s.startswith("llm:"):
        from mi_llm.miti.coders.llm import LLMCoder

        return LLMCoder.from_spec(s, **llm_opts)
    if s == "default":
        folder = default_coder_dir()
        if not (folder / "coder.json").is_file():  # a broken install, not user input
            raise MiLlmError(f"the shipped default coder is missing ({folder}); reinstall mi-llm")
        return TrainedCoder.load(folder)
    folder = Path(s).expanduser()
    if not folder.exists():
        raise MiLlmError(
            f"{folder}: no such coder folder (use a folder from `mi-llm miti train-coder`, "
            "`default`, or llm:<backend>:<model>)"
        )
    return TrainedCoder.load(folder)


def code_dialogues(dialogues: Sequence[Any], spec: str | Path = "default", **kw: Any) -> list[Any]:
    """Convenience: load a coder and code dialogues with it."""
    return load_coder(spec).code_dialogues(dialogues, **kw)
