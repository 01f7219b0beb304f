"""Agreement between MITI coders: ICC at session level, kappa and alpha at utterance level.

Sessions are matched by id. Utterances are matched by position inside each counselor turn
(`align="strict"`: the coders must have split every turn identically, else an error says
where) or by identical text (`align="text"`: utterances whose text differs are left out
and counted). "Not coded" (null) is a category of its own, `none`.

- Session level, per global rating, summary score and behaviour count: ICC(2,1) (two-way
  random effects, absolute agreement, single rater; McGraw & Wong's ICC(A,1)) and ICC(3,1)
  (two-way mixed effects, consistency, single rater; ICC(C,1)), from pingouin.
- Utterance level, overall and per code (one code vs the rest): Cohen's kappa per pair of
  coders (scikit-learn; with more than two coders also their mean, Light's kappa) and
  Krippendorff's alpha, nominal, over all coders (krippendorff); a confusion matrix per pair.
Undefined statistics (too few sessions for an ICC, no variance, a code nobody used) are None,
with a note.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import InputError, MiLlmError
from mi_llm.miti.codebook import CODES, NONE_LABEL
from mi_llm.miti.scoring import DEFAULT_RATIO, SCORE_KEYS, RatioDefinition, SessionScores, score_session
from mi_llm.miti.session import CodedSession, read_coded_dialogues

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = CODES + (NONE_LABEL,)
ICC_FORMS = {
    "icc2_1": "ICC(2,1): two-way random effects, absolute agreement, single rater (McGraw & Wong ICC(A,1))",
    "icc3_1": "ICC(3,1): two-way mixed effects, consistency, single rater (McGraw & Wong ICC(C,1))",
}
HUMAN_BENCHMARKS = {
    "session_icc": "0.75-1.0 between trained human coders (Pérez-Rosas et al. 2016)",
    "utterance_kappa": "0.31-0.64 between trained human coders (Pérez-Rosas et al. 2016)",
    "least_reliable": "Emphasize Autonomy and %CR (Moyers et al. 2016)",
}
_SPACE = re.compile(r"\s+")


@dataclass
class CoderFile:
    name: str
    path: Path
    sessions: dict[str, Dialogue]
    lines: dict[str, int]


def read_coder_file(path: str | Path, name: str | None = None) -> CoderFile:
    """One coder's coded sessions (a JSONL of dialogues), for agreement; not a MITI coder
    model, which `mi_llm.miti.coders.load_coder` loads."""
    rows = read_coded_dialogues(path)
    path = Path(path)
    return CoderFile(
        name=name or path.stem,
        path=path,
        sessions={d.id: d for _, d in rows},
        lines={d.id: line for line, d in rows},
    )


@dataclass
class Unit:
    """One utterance coded by every coder."""

    session: str
    turn: int  # index in Dialogue.turns
    text: str
    labels: tuple[str, ...]  # one per coder, in coder order


@dataclass
class Alignment:
    mode: str
    units: list[Unit]
    unmatched: dict[str, int] = field(default_factory=dict)


def _norm(text: str) -> str:
    return _SPACE.sub("", text)


def _label(code: str | None) -> str:
    return NONE_LABEL if code is None else code


def align(coders: Sequence[CoderFile], session_ids: Sequence[str], mode: str = "strict") -> Alignment:
    """Pair the coders' utterances in the matched sessions."""
    if mode not in ("strict", "text"):
        raise MiLlmError(f"unknown alignment {mode!r}: use strict or text")
    units: list[Unit] = []
    unmatched = {c.name: 0 for c in coders}
    mismatches: list[str] = []
    for sid in session_ids:
        dialogues = [c.sessions[sid] for c in coders]
        base = dialogues[0]
        for c, d in zip(coders[1:], dialogues[1:]):
            if [(t.role, _norm(t.text)) for t in d.turns] != [(t.role, _norm(t.text)) for t in base.turns]:
                raise InputError(
                    c.path,
                    f"session {sid!r} differs in its turns from {coders[0].name}'s "
                    "(the coders must code the same dialogue)",
                    c.lines[sid],
                )
        for ti, turn in enumerate(base.turns):
            if turn.role != "counselor":
                continue
            per_coder = []
            for c, d in zip(coders, dialogues):
                codes = d.turns[ti].codes
                if codes is None:
                    raise InputError(c.path, f"session {sid!r}: counselor turn {ti + 1} is not coded", c.lines[sid])
                per_coder.append(codes)
            if mode == "strict":
                texts = [[_norm(u.text) for u in codes] for codes in per_coder]
                if any(t != texts[0] for t in texts[1:]):
                    sizes = ", ".join(f"{c.name} {len(codes)}" for c, codes in zip(coders, per_coder))
                    mismatches.append(f"session {sid!r} turn {ti + 1} (utterances: {sizes})")
                    continue
                for k, u in enumerate(per_coder[0]):
                    units.append(Unit(sid, ti, u.text, tuple(_label(codes[k].code) for codes in per_coder)))
            else:
                units += _align_by_text(sid, ti, coders, per_coder, unmatched)
    if mismatches:
        more = f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        raise MiLlmError(
            f"the coders split {len(mismatches)} counselor turn(s) into utterances differently: "
            f"{'; '.join(mismatches[:3])}{more}. Agree on one segmentation (e.g. annotate from the same "
            "pre-split file) or pass --align text to pair utterances with identical text and leave out the rest"
        )
    return Alignment(mode=mode, units=units, unmatched=unmatched)


def _align_by_text(
    sid: str, ti: int, coders: Sequence[CoderFile], per_coder: list, unmatched: dict[str, int]
) -> list[Unit]:
    used: list[set[int]] = [set() for _ in coders]
    units = []
    for k, u in enumerate(per_coder[0]):
        key = _norm(u.text)
        picks = [k]
        for ci, codes in enumerate(per_coder[1:], start=1):
            j = next((j for j, v in enumerate(codes) if j not in used[ci] and _norm(v.text) == key), None)
            if j is None:
                break
            picks.append(j)
        if len(picks) < len(coders):
            continue
        for ci, j in enumerate(picks):
            used[ci].add(j)
        units.append(Unit(sid, ti, u.text, tuple(_label(per_coder[ci][j].code) for ci, j in enumerate(picks))))
    for ci, c in enumerate(coders):
        unmatched[c.name] += len(per_coder[ci]) - len(units)
    return units


# --- statistics --------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _round(x: Any) -> float | None:
    # ANOVA arithmetic leaves 1.0000000000000002 where agreement is perfect.
    v = _finite(x)
    return None if v is None else round(v, 6)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa (scikit-learn); None when undefined (both coders used a single, same label)."""
    from sklearn.metrics import cohen_kappa_score

    if not a:
        return None
    if len(set(a) | set(b)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _finite(cohen_kappa_score(list(a), list(b)))


def krippendorff_alpha(rows: Sequence[Sequence[str]], labels: Sequence[str] = LABELS) -> float | None:
    """Nominal Krippendorff's alpha over coders (rows) x units; None with fewer than 2 values in play."""
    import krippendorff

    index = {lab: i for i, lab in enumerate(labels)}
    data = np.array([[index[x] for x in row] for row in rows], dtype=float)
    if data.size == 0 or len(np.unique(data)) < 2:
        return None
    return _finite(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


# pingouin's two-way ANOVA asserts at least 5 ratings (sessions x coders): two sessions
# rated by two coders were an AssertionError, not an undefined ICC.
MIN_ICC_RATINGS = 5


def min_icc_sessions(coders: int) -> int:
    """Sessions every coder must have rated for an ICC: 2 at least, and 5 ratings in all."""
    return max(2, -(-MIN_ICC_RATINGS // max(coders, 1)))


def icc(table: dict[str, list[float]], coders: int | None = None) -> dict[str, Any]:
    """ICC(2,1) and ICC(3,1) with 95% CIs from {session: [value per coder]} (complete rows only);
    `coders` defaults to the length of the rows."""
    import pandas as pd
    import pingouin

    out: dict[str, Any] = {
        "n": len(table),
        "icc2_1": None,
        "icc2_1_ci95": None,
        "icc3_1": None,
        "icc3_1_ci95": None,
        "note": None,
    }
    if coders is None:
        coders = max((len(v) for v in table.values()), default=2)
    needed = min_icc_sessions(coders)
    if len(table) < needed:
        out["note"] = f"needs at least {needed} sessions rated by every coder ({len(table)} here)"
        return out
    values = np.array(list(table.values()), dtype=float)
    if np.ptp(values) == 0:
        out["note"] = "undefined: all values equal"
        return out
    long = pd.DataFrame(
        [(sid, k, v) for sid, vals in table.items() for k, v in enumerate(vals)],
        columns=["session", "coder", "value"],
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = pingouin.intraclass_corr(data=long, targets="session", raters="coder", ratings="value")
    res = res.set_index("Type")
    for key, names in (("icc2_1", ("ICC(A,1)", "ICC2")), ("icc3_1", ("ICC(C,1)", "ICC3"))):
        name = next(n for n in names if n in res.index)
        out[key] = _round(res.at[name, "ICC"])
        ci = [_round(x) for x in res.at[name, "CI95"]]
        out[f"{key}_ci95"] = None if None in ci else ci
    if out["icc2_1"] is None:
        out["note"] = "undefined (no between-session variance)"
    elif len(table) < 5:
        out["note"] = f"only {len(table)} sessions: the ICC is very uncertain"
    return out


def _pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    return list(combinations(range(len(names)), 2))


def utterance_agreement(units: Sequence[Unit], names: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    cols = list(zip(*(u.labels for u in units))) if units else [() for _ in names]
    pairs = _pairs(names)

    def kappas(rows: Sequence[Sequence[str]]) -> tuple[float | None, dict[str, float | None]]:
        per = {f"{names[i]} vs {names[j]}": cohen_kappa(rows[i], rows[j]) for i, j in pairs}
        defined = [v for v in per.values() if v is not None]
        mean = (sum(defined) / len(defined) if len(defined) == len(per) else None) if per else None
        return mean, per

    def agree(rows: Sequence[Sequence[str]]) -> float | None:
        n = len(rows[0]) if rows else 0
        return None if n == 0 else sum(len(set(col)) == 1 for col in zip(*rows)) / n

    kappa, kappa_pairs = kappas(cols)
    overall = {
        "units": len(units),
        "percent_agreement": agree(cols),
        "cohen_kappa": kappa,
        "cohen_kappa_pairs": kappa_pairs,
        "krippendorff_alpha": krippendorff_alpha(cols),
    }
    per_code: dict[str, Any] = {}
    for code in LABELS:
        binary = [["yes" if x == code else "no" for x in col] for col in cols]
        k, kp = kappas(binary)
        per_code[code] = {
            "count": {n: sum(x == code for x in col) for n, col in zip(names, cols)},
            "percent_agreement": agree(binary),
            "cohen_kappa": k,
            "cohen_kappa_pairs": kp,
            "krippendorff_alpha": krippendorff_alpha(binary, ("yes", "no")),
        }
    confusion = {}
    for i, j in pairs:
        m = (
            confusion_matrix(list(cols[i]), list(cols[j]), labels=list(LABELS))
            if units
            else np.zeros((len(LABELS),) * 2, int)
        )
        confusion[f"{names[i]} vs {names[j]}"] = {
            "rows": names[i],
            "columns": names[j],
            "labels": list(LABELS),
            "matrix": m.astype(int).tolist(),
        }
    return {"labels": list(LABELS), "overall": overall, "per_code": per_code, "confusion": confusion}


def session_agreement(
    scores: dict[str, list[SessionScores]], keys: Sequence[str] = SCORE_KEYS + CODES
) -> dict[str, Any]:
    """ICC per score over the sessions where every coder's value is defined."""
    out: dict[str, Any] = {}
    coders = len(next(iter(scores.values()))) if scores else None
    for key in keys:
        table: dict[str, list[float]] = {}
        left_out = 0
        for sid, per_coder in scores.items():
            vals = [s.value(key) for s in per_coder]
            if any(v is None for v in vals):
                left_out += 1
                continue
            table[sid] = [float(v) for v in vals]  # type: ignore[arg-type]
        out[key] = icc(table, coders) | {"left_out": left_out}
    return out


def agreement(
    coders: Sequence[CoderFile], *, mode: str = "strict", definition: RatioDefinition = DEFAULT_RATIO
) -> dict[str, Any]:
    """Everything `mi-llm miti agree` reports, as a JSON-ready dict."""
    if len(coders) < 2:
        raise MiLlmError("agreement needs at least two coders' files")
    names = [c.name for c in coders]
    if len(set(names)) != len(names):
        raise MiLlmError(f"coder names repeat: {names}; name them as NAME=FILE")
    common = [sid for sid in coders[0].sessions if all(sid in c.sessions for c in coders[1:])]
    only_in = {c.name: [sid for sid in c.sessions if sid not in common] for c in coders}
    if not common:
        raise MiLlmError("the coders' files share no session id: nothing to compare")
    for c in coders:
        if only_in[c.name]:
            log.warning("%d session(s) only in %s's file are left out", len(only_in[c.name]), c.name)
    aligned = align(coders, common, mode)
    scores: dict[str, list[SessionScores]] = {}
    for sid in common:
        row = []
        for c in coders:
            try:
                row.append(score_session(CodedSession.from_dialogue(c.sessions[sid]), definition))
            except MiLlmError as e:
                raise InputError(c.path, str(e), c.lines[sid]) from None
        scores[sid] = row
    return {
        "coders": [{"name": c.name, "file": str(c.path), "sessions": len(c.sessions)} for c in coders],
        "sessions": {"matched": len(common), "only_in": only_in},
        "alignment": {"mode": aligned.mode, "units": len(aligned.units), "unmatched": aligned.unmatched},
        "utterances": utterance_agreement(aligned.units, names),
        "session_scores": {
            "forms": ICC_FORMS,
            "mi_adherent_ratio": definition.describe(),
            "scores": session_agreement(scores),
        },
        "benchmarks": HUMAN_BENCHMARKS,
    }
