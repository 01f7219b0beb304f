"""Labelled crisis text for the learned detector: the public sets in `crisis/` of the shared
data folder (read in place, never copied into the project) and the project's own written sets.

Every reader yields `LabelledText` rows with a `source` (what cross-validation holds out
together) and a `group` (rows that must stay on one side of any split: one Reddit user's
posts). Fine risk types (`subcategory`) follow the categories of the detector:

    passive_ideation, active_ideation, plan (plan, means, preparation), attempt,
    self_harm, harm_others, abuse, none

The coarse `category` (suicide, self_harm, harm_others, abuse, none) is what the rules and
the crisis resources use.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mi_llm.errors import MiLlmError

SUBCATEGORIES = (
    "attempt",
    "plan",
    "active_ideation",
    "self_harm",
    "passive_ideation",
    "harm_others",
    "abuse",
)  # most severe first: a row with several labels takes the first
NONE = "none"
COARSE = {
    "attempt": "suicide",
    "plan": "suicide",
    "active_ideation": "suicide",
    "passive_ideation": "suicide",
    "self_harm": "self_harm",
    "harm_others": "harm_others",
    "abuse": "abuse",
    NONE: NONE,
}

# PsySUICIDE's labels. "关于自杀的探索" (asking or talking about suicide, often someone
# else's) is not the speaker's own risk: such rows are kept apart (subcategory "exploring").
PSYSUICIDE_LABELS = {
    "与自杀/自伤/攻击行为无关": NONE,
    "被动自杀意图": "passive_ideation",
    "主动自杀意图": "active_ideation",
    "自杀计划": "plan",
    "自杀准备行为": "plan",
    "自杀未遂": "attempt",
    "自伤意图": "self_harm",
    "自伤行为": "self_harm",
    "用户攻击行为": "harm_others",
    "他人攻击行为": "abuse",
}
EXPLORING = "exploring"

# C-SSRS Reddit user levels -> the type given to each of the user's posts (user-level labels:
# many posts of an at-risk user are not themselves about risk). Indicator users are kept
# apart: "at risk, no ideation stated" is neither a positive nor a clean negative.
CSSRS_LEVELS = {"Supportive": NONE, "Ideation": "active_ideation", "Behavior": "plan", "Attempt": "attempt"}
INDICATOR = "indicator"


@dataclass(frozen=True)
class LabelledText:
    text: str
    language: str
    source: str  # e.g. psysuicide:client_counselor, sad, cssrs, written
    group: str  # rows of one group stay together in every split
    subcategory: str  # one of SUBCATEGORIES, "none", or a kept-apart label (exploring, indicator)
    fine: bool = True  # the subcategory was labelled, not inferred from a coarse category

    @property
    def crisis(self) -> bool:
        return self.subcategory in SUBCATEGORIES

    @property
    def category(self) -> str:
        return COARSE.get(self.subcategory, NONE)

    @property
    def trainable(self) -> bool:
        return self.subcategory in SUBCATEGORIES or self.subcategory == NONE


def crisis_dir(shared: str | Path) -> Path:
    """`crisis/` under a shared data folder (or the folder itself when it is one)."""
    p = Path(shared)
    return p if (p / "psyguard").is_dir() else p / "crisis"


def read_psysuicide(path: str | Path) -> Iterator[LabelledText]:
    """PsySUICIDE (`psyguard/valid.json`): one row per message, group = its own idx."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MiLlmError(f"{path}: cannot read PsySUICIDE JSON ({e})") from None
    for i, row in enumerate(rows):
        labels = row.get("labels") or []
        unknown = [x for x in labels if x not in PSYSUICIDE_LABELS and x != "关于自杀的探索"]
        if unknown or not isinstance(row.get("text"), str):
            raise MiLlmError(f"{path}: row {i}: unexpected labels {unknown} or no text")
        mapped = [PSYSUICIDE_LABELS[x] for x in labels if x in PSYSUICIDE_LABELS]
        risky = [s for s in SUBCATEGORIES if s in mapped]
        sub = risky[0] if risky else (EXPLORING if "关于自杀的探索" in labels else NONE)
        yield LabelledText(
            row["text"], "zh", f"psysuicide:{row.get('data_source', '?')}", f"ps{row.get('idx', i)}", sub
        )


def read_sad(path: str | Path) -> Iterator[LabelledText]:
    """SAD everyday-stress sentences: all distress without crisis (hard negatives)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("sentence") or "").strip()
            if len(text) > 1:
                yield LabelledText(text, "en", "sad", f"sad{row.get('sID')}", NONE)


_POST_SPLIT = re.compile(r"""['"], ['"]""")


def _posts(cell: str) -> list[str]:
    """The `Post` cell is a Python list literal; a few are cut short, so fall back to splitting."""
    try:
        posts = ast.literal_eval(cell)
        if isinstance(posts, list):
            return [str(p) for p in posts]
    except (ValueError, SyntaxError):
        pass
    return _POST_SPLIT.split(cell.strip().lstrip("[").rstrip("]").strip("'\""))


def read_cssrs(path: str | Path) -> Iterator[LabelledText]:
    """C-SSRS Reddit 500: every post of a user carries the user's level; group = the user."""
    path = Path(path)
    csv.field_size_limit(1 << 28)
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            level = row.get("Label", "")
            sub = CSSRS_LEVELS.get(level, INDICATOR if level == "Indicator" else None)
            if sub is None:
                raise MiLlmError(f"{path}: unknown label {level!r}")
            for post in _posts(row.get("Post") or ""):
                post = post.strip()
                if len(post) > 1:
                    yield LabelledText(post, "en", "cssrs", f"cssrs:{row['User']}", sub)


def read_shared(shared: str | Path) -> list[LabelledText]:
    """All three public sets; a missing folder is an error naming it."""
    d = crisis_dir(shared)
    paths = {
        "psysuicide": d / "psyguard" / "valid.json",
        "sad": d / "sad" / "SAD_v1.csv",
        "cssrs": d / "cssrs-reddit500" / "500_Reddit_users_posts_labels.csv",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MiLlmError(f"missing crisis data: {', '.join(missing)}")
    return [*read_psysuicide(paths["psysuicide"]), *read_sad(paths["sad"]), *read_cssrs(paths["cssrs"])]


def from_labelled(rows: list[dict], source: str) -> list[LabelledText]:
    """Rows of the labelled JSONL format (`safety eval --data`): `subcategory` when given,
    else the coarse category (suicide rows without a finer type count as active ideation)."""
    out = []
    for i, r in enumerate(rows):
        sub, fine = r.get("subcategory"), True
        if sub not in (*SUBCATEGORIES, NONE):
            sub, fine = {"suicide": "active_ideation"}.get(r["category"], r["category"]), r["category"] != "suicide"
        out.append(LabelledText(r["text"], r.get("language") or "?", source, f"{source}:{r.get('id', i)}", sub, fine))
    return out


# Real client talk without crisis labels, read with the project's importers. Turns the
# rules flag are left out (they are mostly real disclosures); the rest are negatives:
# everyday counseling talk, which the crisis sets lack. AnnoMI states no licence now, so
# it is never trained on, only measured.
TALK_CORPORA = {
    "cpsycound": ("cpsycound", "cpsycound/CPsyCounD", "zh"),  # CC BY 4.0
    "smile": ("smile", "smile/data", "zh"),  # CC0 1.0
    "mibot": ("mibot", "mibot", "en"),  # CC BY-SA 4.0
    "annomi": ("annomi", "annomi/AnnoMI-simple.csv", "en"),  # no licence stated: measured only
}
TALK_TRAINED = ("cpsycound", "smile", "mibot")


def read_client_talk(
    shared: str | Path, corpora: Sequence[str] = TALK_TRAINED, per_corpus: int | None = 2000, seed: int = 0
) -> list[LabelledText]:
    """Client turns of each corpus as negatives (source `talk:<corpus>`, group = dialogue);
    at most `per_corpus` turns, whole dialogues drawn at random, rule-flagged turns left out."""
    import random

    from mi_llm.corpus.importers import import_corpus
    from mi_llm.serve.safety.classifier import default_classifier

    rules = default_classifier()
    base = Path(shared)
    out: list[LabelledText] = []
    for name in corpora:
        importer, rel, lang = TALK_CORPORA[name]
        path = base / rel
        if not path.exists():
            raise MiLlmError(f"missing client talk: {path}")
        dialogues, _ = import_corpus(importer, path)
        random.Random(seed).shuffle(dialogues)
        rows: list[LabelledText] = []
        for d in dialogues:
            if per_corpus is not None and len(rows) >= per_corpus:
                break
            for t in d.turns:
                if t.role == "client" and len(t.text.strip()) > 1 and not rules.classify(t.text, lang).crisis:
                    rows.append(LabelledText(t.text, lang, f"talk:{name}", f"{name}:{d.id}", NONE))
        out += rows
    return out
