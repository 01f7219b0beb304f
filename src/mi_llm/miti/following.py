"""Code-following: when a reply was asked for a MITI code (`predict --strategy CR`, a policy)
or opened with one of its own (`--strategy model`), how often does the coder hear that code?

Two figures per code: `followed` (the coder's one code of the reply, mi_llm.build.strategy.
turn_code, is the asked one) and `present` (some utterance of the reply carries it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mi_llm.build.strategy import turn_code
from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError
from mi_llm.io import iter_jsonl
from mi_llm.miti.codebook import NONE_LABEL

Heard = Sequence[str | None]  # the codes the coder gave a reply's utterances


def code_following(pairs: Iterable[tuple[str, Heard]]) -> dict[str, Any]:
    """(asked code, heard codes) pairs -> per asked code: asked, followed, present and their
    rates, and what the coder heard instead (`heard`: its one code of each reply, counted)."""
    asked: Counter[str] = Counter()
    followed: Counter[str] = Counter()
    present: Counter[str] = Counter()
    heard: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for code, codes in pairs:
        main = turn_code(codes)
        asked[code] += 1
        followed[code] += main == code
        present[code] += code in codes
        heard[code][main or NONE_LABEL] += 1

    def row(n: int, f: int, p: int) -> dict[str, Any]:
        return {
            "asked": n,
            "followed": f,
            "rate": f / n if n else None,
            "present": p,
            "present_rate": p / n if n else None,
        }

    return {
        "by_code": {c: row(asked[c], followed[c], present[c]) for c in sorted(asked)},
        "all": row(sum(asked.values()), sum(followed.values()), sum(present.values())),
        "heard": {c: dict(heard[c].most_common()) for c in sorted(heard)},
    }


def strategy_records(path: str | Path, required: bool = True) -> list[dict[str, Any]]:
    """The prediction lines of `path` that carry a code (`predict --strategy`); an
    InputError when none does and one is `required` (a run's `--strategy model` system whose
    model never wrote a tag has none: that is a finding, not an input error)."""
    recs = [r for _, r in iter_jsonl(path) if isinstance(r, dict) and r.get("code")]
    if not recs and required:
        raise InputError(path, "no prediction carries a strategy code (predict with --strategy)")
    return recs


def heard_by_round(coded: Iterable[Dialogue]) -> dict[tuple[str, int], list[str | None]]:
    """{(dialogue id, round): the codes of that round's counselor reply} of coded sessions."""
    out: dict[tuple[str, int], list[str | None]] = {}
    for d in coded:
        for i, (_, counselor) in enumerate(d.rounds(), start=1):
            if counselor.codes is not None:
                out[(d.id, i)] = [u.code for u in counselor.codes]
    return out


def following_of_predictions(
    records: Sequence[Mapping[str, Any]], heard: Mapping[tuple[str, int], Heard]
) -> dict[str, Any]:
    """Code-following of strategy predictions whose replies were coded (`heard`, by round)."""
    pairs = [
        (r["code"], heard[(r["dialogue_id"], r["round"])]) for r in records if (r["dialogue_id"], r["round"]) in heard
    ]
    out = code_following(pairs)
    out["strategy"] = next((r.get("strategy") for r in records), None)
    out["uncoded"] = len(records) - len(pairs)
    return out


def code_predictions(
    records: Sequence[Mapping[str, Any]], coder: Any, contexts: Mapping[str, str] | None = None
) -> dict[tuple[str, int], list[str | None]]:
    """Code each prediction's reply with `coder` (split into utterances; the client's turn
    from `contexts`, by sample id, as the coder's context where given)."""
    from mi_llm.miti.segment import split_utterances

    volleys = []
    for r in records:
        lang = r.get("language")
        texts = split_utterances(r["prediction"], lang)
        volleys.append(((contexts or {}).get(r["sample_id"], ""), texts, lang))
    results = coder.code_volleys(volleys)
    return {(r["dialogue_id"], r["round"]): [x.code for x in res] for r, res in zip(records, results)}


def evaluate_following(
    predictions: str | Path, output: str | Path, coder: Any = "default", data: str | Path | None = None
) -> dict[str, Any]:
    """`mi-llm evaluate --code-following`: code the strategy predictions' replies with `coder`
    (a coder, or a name or folder for load_coder; their client turns from the test samples
    `data`, where given) and write the figures."""
    from mi_llm.evaluate.predict import load_test_samples
    from mi_llm.io import write_json
    from mi_llm.miti.coders import load_coder

    records = strategy_records(predictions)
    contexts = {s.sample_id: s.query for s in load_test_samples(data)[1]} if data is not None else None
    loaded = load_coder(coder) if isinstance(coder, (str, Path)) else coder
    result = following_of_predictions(records, code_predictions(records, loaded, contexts))
    result["coder"] = str(coder) if isinstance(coder, (str, Path)) else loaded.name
    write_json(output, result)
    return result
