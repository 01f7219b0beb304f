"""Simulator fidelity: how the simulated clients talk, beside how real clients talk.

LLM clients are known to be too long, too positive and to resolve too fast. For each
language, a profile of the client side of a set of dialogues:

- `length`: client turn length, in characters (zh, spaces left out) or words (en);
- `talk`: change / sustain / neutral shares of the client turns, as the client-talk coder
  codes them (the same shipped coder for simulated and real talk, so its own biases cancel
  in the comparison; on AnnoMI's sample it finds less change talk than the experts, 28% vs
  34%, and it was trained on English only, so the Chinese shares are rougher);
- `talk_reversals`: of consecutive non-neutral client turns, the share where change talk
  is followed by sustain talk (the observable sign of a stage moving back in real talk);
- `rounds`: counselor-client rounds per dialogue, and the round of the first change talk.

A simulated profile adds the state machine's own view: stage moves back per session and
how many sessions resolve (the client's plan), in how many rounds.

The real reference profiles (AnnoMI, MIBot in English, CPsyCounD in Chinese) are computed
once from `../shared/data` by `benchmarks/fidelity_reference.py` and shipped as
`mi_llm/resources/fidelity/reference.json` (with the coder, the sample and the date), so a
user's simulation is compared without the data. `mi-llm simulate` writes
`DIR/fidelity.json`: the simulated profile, the reference and the gaps.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mi_llm.corpus.schema import Dialogue
from mi_llm.io import write_json

VERSION = 1
TALK = ("change", "sustain", "neutral")
# What each reference corpus is, for the report; the paths are under ../shared/data.
REFERENCE_SOURCES: dict[str, tuple[str, str, str]] = {
    # name: (importer, path under the data folder, what it is)
    "annomi": ("annomi", "annomi", "AnnoMI: MI demonstration videos, human clients (actors and real), en"),
    "mibot": ("mibot", "mibot", "MIBot: human smokers with a GPT-4o MI counsellor, en"),
    "cpsycound": ("cpsycound", "cpsycound/CPsyCounD", "CPsyCounD: counseling dialogues (LLM-rewritten reports), zh"),
}


def utterance_length(text: str, language: str) -> int:
    """Characters (zh: no spaces) or words (en)."""
    return len("".join(text.split())) if language == "zh" else len(text.split())


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None}
    ordered = sorted(values)
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 2),
        "median": round(float(statistics.median(ordered)), 2),
        "p90": round(float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]), 2),
    }


def _client_turn_talk(d: Dialogue) -> list[str | None]:
    return [t.talk for t in d.turns if t.role == "client"]


def talk_profile(talk_by_dialogue: Iterable[Sequence[str | None]]) -> dict[str, Any]:
    """Shares of the coded client turns, reversals (change then sustain among the non-neutral
    turns of a dialogue) and the round of the first change talk (0 = the client's first turn)."""
    counts: Counter[str] = Counter()
    reversals = pairs = 0
    first_change: list[float] = []
    for talk in talk_by_dialogue:
        coded = [x for x in talk if x in TALK]
        counts.update(coded)
        polar = [x for x in coded if x != "neutral"]
        for a, b in zip(polar, polar[1:]):
            if a == "change":
                pairs += 1
                reversals += b == "sustain"
        where = next((i for i, x in enumerate(talk) if x == "change"), None)
        if where is not None:
            first_change.append(where)
    n = sum(counts.values())
    return {
        "coded_turns": n,
        "shares": {k: round(counts[k] / n, 4) if n else None for k in TALK},
        # after a change-talk turn, how often the next non-neutral turn is sustain talk
        "change_then_sustain": round(reversals / pairs, 4) if pairs else None,
        "change_pairs": pairs,
        "first_change_round": _summary(first_change),
    }


def client_profile(dialogues: Sequence[Dialogue], language: str) -> dict[str, Any]:
    """The client side of dialogues in one language (their client turns coded in `talk`)."""
    lengths = [utterance_length(t.text, language) for d in dialogues for t in d.turns if t.role == "client"]
    return {
        "dialogues": len(dialogues),
        "client_turns": len(lengths),
        "length_unit": "chars" if language == "zh" else "words",
        "length": _summary(lengths),
        "rounds": _summary([len(d.rounds()) for d in dialogues]),
        "talk": talk_profile(_client_turn_talk(d) for d in dialogues),
    }


def simulated_profile(sessions: Sequence[Dialogue], client_talk: dict[str, Sequence[str | None]]) -> dict[str, Any]:
    """Per language, the simulated clients' profile; `client_talk` is each session's talk
    type per client turn (outcomes.json's `client_talk`, by session id)."""
    out: dict[str, Any] = {}
    for language in sorted({d.language for d in sessions}):
        group = [d for d in sessions if d.language == language]
        lengths = [utterance_length(t.text, language) for d in group for t in d.turns if t.role == "client"]
        talk = [list(client_talk.get(d.id) or []) for d in group]
        resolved = [d.meta.get("rounds") for d in group if d.meta.get("end_reason") == "plan"]
        moves_back = [int(d.meta.get("moves_back") or 0) for d in group]
        out[language] = {
            "dialogues": len(group),
            "client_turns": len(lengths),
            "length_unit": "chars" if language == "zh" else "words",
            "length": _summary(lengths),
            "rounds": _summary([int(d.meta.get("rounds") or 0) for d in group]),
            "talk": talk_profile(talk),
            "stage": {
                "moves_back_per_session": round(statistics.fmean(moves_back), 4) if moves_back else None,
                "sessions_moving_back": round(sum(m > 0 for m in moves_back) / len(moves_back), 4)
                if moves_back
                else None,
                "resolved": round(len(resolved) / len(group), 4) if group else None,
                "rounds_to_plan": _summary([float(r) for r in resolved if r is not None]),
            },
        }
    return out


# ---------------------------------------------------------------- the real reference


def reference_file() -> Path:
    return Path(str(resources.files("mi_llm.resources").joinpath("fidelity", "reference.json")))


def load_reference(path: str | Path | None = None) -> dict[str, Any]:
    return dict(json.loads(Path(path or reference_file()).read_text(encoding="utf-8")))


def sample_dialogues(dialogues: Sequence[Dialogue], max_client_turns: int, seed: int) -> list[Dialogue]:
    """Whole dialogues drawn at random until about `max_client_turns` client turns (the coder
    reads each turn with its context, so dialogues are kept whole)."""
    order = list(dialogues)
    random.Random(seed).shuffle(order)
    out: list[Dialogue] = []
    total = 0
    for d in order:
        if total >= max_client_turns:
            break
        out.append(d)
        total += sum(1 for t in d.turns if t.role == "client")
    return out


def reference_profiles(
    data_dir: str | Path, client_coder: Any, max_client_turns: int = 400, seed: int = 0
) -> dict[str, Any]:
    """Each reference corpus's client profile: lengths and rounds over all its dialogues, talk
    over a sample of whole dialogues coded by `client_coder` (coding is the slow part)."""
    from mi_llm.corpus.importers import import_corpus
    from mi_llm.miti.coders.base import code_client_turns

    out: dict[str, Any] = {}
    for name, (importer, sub, what) in REFERENCE_SOURCES.items():
        dialogues, _ = import_corpus(importer, Path(data_dir) / sub)
        language = dialogues[0].language
        whole = client_profile(dialogues, language)
        sample = [d.model_copy(deep=True) for d in sample_dialogues(dialogues, max_client_turns, seed)]
        code_client_turns(sample, client_coder)
        coded = client_profile(sample, language)
        whole["talk"] = coded["talk"]
        whole["talk"]["sample_dialogues"] = len(sample)
        out[name] = {"language": language, "what": what, **whole}
    return out


# ---------------------------------------------------------------- the comparison


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 4) if a is not None and b is not None else None


def gaps(simulated: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Simulated against every reference corpus of its language: length ratio (1 = as long
    as real clients), talk share differences (positive: the simulator says more of it), the
    change-then-sustain difference and the round of the first change talk."""
    rows = []
    for language, sim in simulated.items():
        for name, ref in reference.get("corpora", {}).items():
            if ref["language"] != language:
                continue
            s_sh, r_sh = sim["talk"]["shares"], ref["talk"]["shares"]
            rows.append(
                {
                    "language": language,
                    "reference": name,
                    "length_ratio_median": _ratio(sim["length"]["median"], ref["length"]["median"]),
                    "change_share_diff": _diff(s_sh["change"], r_sh["change"]),
                    "sustain_share_diff": _diff(s_sh["sustain"], r_sh["sustain"]),
                    "change_then_sustain_diff": _diff(
                        sim["talk"]["change_then_sustain"], ref["talk"]["change_then_sustain"]
                    ),
                    "first_change_round_diff": _diff(
                        sim["talk"]["first_change_round"]["median"], ref["talk"]["first_change_round"]["median"]
                    ),
                }
            )
    return rows


def fidelity_report(
    sessions: Sequence[Dialogue], outcomes: dict[str, Any], reference: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The simulated clients' profile (talk types from outcomes.json), the reference, the gaps."""
    reference = reference if reference is not None else load_reference()
    talk = {o["id"]: o.get("client_talk") or [] for o in outcomes.get("sessions", [])}
    simulated = simulated_profile(sessions, talk)
    return {
        "version": VERSION,
        "client_talk_coder": (outcomes.get("coders") or {}).get("client_talk"),
        "reference_coder": reference.get("client_talk_coder"),
        "simulated": simulated,
        "reference": reference,
        "gaps": gaps(simulated, reference),
    }


def write_fidelity(
    path: str | Path, sessions: Sequence[Dialogue], outcomes: dict[str, Any], reference: dict[str, Any] | None = None
) -> dict[str, Any]:
    report = fidelity_report(sessions, outcomes, reference)
    write_json(path, report)
    return report
