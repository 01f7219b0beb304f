"""The build stage: dialogues -> split -> round samples -> exports, into one folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mi_llm.build.exports import export_records, write_llamafactory, write_openai
from mi_llm.build.samples import Split, TokenCounter, augment_code, build_samples, char_count, split_dialogues
from mi_llm.corpus.schema import Dialogue, read_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.io import check_writable, write_json, write_jsonl
from mi_llm.layout import SPLITS, BuildPaths


def token_counter(tokenizer: str) -> TokenCounter:
    """'chars' counts characters; anything else names a model whose tokenizer counts."""
    if tokenizer == "chars":
        return char_count
    from mi_llm.llm.load import load_tokenizer

    tok = load_tokenizer(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def auto_coded(dialogues: Sequence[Dialogue], coder: str) -> list[Dialogue]:
    """The dialogues with every counselor turn coded by an automatic coder (`--codes auto`);
    the corpus's own codes are replaced, its utterance split kept."""
    if not dialogues:
        return []
    from mi_llm.miti.coders import load_coder

    return load_coder(coder).code_dialogues(dialogues, client_talk=None)


def load_all(paths: Sequence[Path]) -> list[Dialogue]:
    dialogues: list[Dialogue] = []
    seen: dict[str, Path] = {}
    for p in paths:
        for d in read_dialogues(p):
            if d.id in seen:
                raise MiLlmError(f"{p}: dialogue id {d.id!r} also appears in {seen[d.id]}")
            seen[d.id] = p
            dialogues.append(d)
    return dialogues


def build(
    paths: Sequence[Path],
    out: Path,
    train: float = 2000,
    test: float = 40,
    seed: int = 42,
    history_budget: int | None = None,
    tokenizer: str = "chars",
    export_mode: str = "rounds",
    codes: str = "none",
    coder: str = "default",
    strategy: bool = False,
    augment_cr: int = 0,
) -> dict[str, Any]:
    if export_mode not in ("rounds", "dialogues"):
        raise MiLlmError(f"--export-mode must be 'rounds' or 'dialogues' (got {export_mode!r})")
    if codes not in ("none", "corpus", "auto"):
        raise MiLlmError(f"--codes must be 'none', 'corpus' or 'auto' (got {codes!r})")
    if codes == "none" and (strategy or augment_cr):
        raise MiLlmError("--strategy and --augment-cr need the codes of the replies: pass --codes corpus or auto")
    if strategy and export_mode == "dialogues":
        raise MiLlmError("--strategy tags round targets: use --export-mode rounds")
    if isinstance(augment_cr, bool) or not isinstance(augment_cr, int) or augment_cr < 0:
        raise MiLlmError(f"--augment-cr must be a whole number, at least 0 (got {augment_cr!r})")
    # A negative budget would silently drop every history round; bool is an int to Python.
    if history_budget is not None and (
        isinstance(history_budget, bool) or not isinstance(history_budget, int) or history_budget < 0
    ):
        raise MiLlmError(f"--history-budget must be a whole number of tokens, at least 0 (got {history_budget!r})")
    folder = BuildPaths(out)
    # Checked before reading the dialogues, so that a bad -o (a file, not a folder; no
    # permission) fails at once.
    check_writable(folder.summary)
    dialogues = load_all(paths)
    split = split_dialogues(dialogues, train=train, test=test, seed=seed)
    if codes == "auto":
        split = Split(auto_coded(split.train, coder), auto_coded(split.test, coder), split.unused)
    count = token_counter(tokenizer) if history_budget is not None else char_count
    summary: dict[str, Any] = {
        "seed": seed,
        "history_budget": history_budget,
        "tokenizer": tokenizer,
        "export_mode": export_mode,
        **({"codes": codes, "strategy": strategy, "augment_cr": augment_cr} if codes != "none" else {}),
        **({"coder": coder} if codes == "auto" else {}),
        "unused_dialogues": split.unused,
        "files": [],
    }
    exports = {}
    for name, part in zip(SPLITS, (split.train, split.test)):
        samples = build_samples(part, history_budget, count, codes=codes != "none", strategy=strategy)
        if name == "train" and augment_cr:
            samples = augment_code(samples, "CR", augment_cr)
        write_jsonl(folder.samples(name), samples)
        summary[name] = {"dialogues": len(part), "samples": len(samples), "dialogue_ids": [d.id for d in part]}
        if codes != "none":
            summary[name]["codes"] = dict(sorted(Counter(s.code or "none" for s in samples).items()))
        summary["files"].append(str(folder.samples(name)))
        exports[name] = export_records(samples if export_mode == "rounds" else part, export_mode)  # type: ignore[arg-type]
    write_llamafactory(folder.llamafactory, exports, export_mode)  # type: ignore[arg-type]
    write_openai(folder.openai, exports, export_mode)  # type: ignore[arg-type]
    summary["files"] += [str(folder.llamafactory), str(folder.openai)]
    write_json(folder.summary, summary)
    return summary
