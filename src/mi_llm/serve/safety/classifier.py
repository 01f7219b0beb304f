"""Crisis detection: a transparent, rule-based classifier, one rule file per language.

Each language has a YAML file in `safety/data/rules.<lang>.yaml` with

- `neutral`: spans that make an overlapping match harmless: everyday idioms ("饿死了",
  "my feet are killing me") and contexts ("suicide prevention", "a movie where ...").
- `rules`: regular expressions, each with an id and a category (suicide, self_harm,
  harm_others, abuse). A rule fires unless its match overlaps a neutral span
  (`overrides_neutral` lets a rule win anyway), is negated ("I'm not suicidal",
  "我没有想过自杀"), or, with `subject: first_person`, has someone else as its subject.
- `negation.prefix`: a negator ending the clause text before the match; `negation.within`:
  a negator inside the match, for rules marked `within_negation` (those that span
  "subject ... verb", as "my husband never hits me").

Every decision names the rule that made it, so a reviewer can see why a message was
flagged and change the data file, not the code. The text itself is never logged.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError

log = logging.getLogger(__name__)

CATEGORIES = ("suicide", "self_harm", "harm_others", "abuse")  # in order of precedence
NONE = "none"
LANGUAGES = ("zh", "en")
LEVELS = (NONE, "low", "high")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def normalize(text: str) -> str:
    """NFKC (full-width punctuation to ASCII), lower case, straight apostrophes, single spaces.

    Lengths can change, so matching and offsets refer to the normalized text.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    regex: re.Pattern[str]
    negatable: bool = True
    within_negation: bool = False  # also look for a negator inside the match ("he never hits me")
    subject: str | None = None  # "first_person": the clause's last subject must be the speaker
    overrides_neutral: bool = False


@dataclass(frozen=True)
class Neutral:
    id: str
    regex: re.Pattern[str]


@dataclass
class Match:
    rule: str
    category: str
    span: tuple[int, int]


@dataclass
class SafetyResult:
    crisis: bool
    category: str  # one of CATEGORIES or "none"
    language: str
    matched: str | None = None  # id of the deciding rule
    span: tuple[int, int] | None = None  # of the deciding match, in the normalized text
    categories: list[str] = field(default_factory=list)  # every category that fired
    rules: list[str] = field(default_factory=list)  # every rule that fired
    suppressed: list[str] = field(default_factory=list)  # "rule:reason" for matches that did not count
    # Set by the rules too (a rule match is high risk); the learned detector adds score and subcategory.
    level: str = ""  # none | low | high; "" = from `crisis` (high when a crisis)
    score: float | None = None  # the learned detector's crisis probability
    subcategory: str | None = None  # the risk type (sources.SUBCATEGORIES) when known
    detected_by: list[str] = field(default_factory=list)  # rules, learned, context

    def __post_init__(self) -> None:
        if not self.level:
            self.level = "high" if self.crisis else NONE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "crisis": self.crisis,
            "level": self.level,
            "category": self.category,
            "language": self.language,
        }
        if self.subcategory:
            out["subcategory"] = self.subcategory
        if self.score is not None:
            out["score"] = round(self.score, 4)
        if self.detected_by:
            out["detected_by"] = self.detected_by
        if self.matched:
            out["matched"] = self.matched
            out["span"] = list(self.span) if self.span else None
            out["categories"] = self.categories
            out["rules"] = self.rules
        if self.suppressed:
            out["suppressed"] = self.suppressed
        return out


class LanguageRules:
    """The compiled rule file of one language."""

    def __init__(self, data: dict[str, Any], source: str):
        self.source = source
        try:
            self.language = str(data["language"])
            defs: dict[str, str] = {}
            for k, v in (data.get("defs") or {}).items():  # later definitions may use earlier ones
                defs[k] = _expand(v, defs, f"{source}: defs.{k}")
            neg = data.get("negation") or {}
            self.neg_prefix = _compile(neg.get("prefix"), f"{source}: negation.prefix", defs)
            self.neg_within = _compile(neg.get("within"), f"{source}: negation.within", defs)
            self.clause_split = _compile_required(data.get("clause_split") or r"[.!?;\n]", f"{source}: clause_split")
            subj = data.get("subject") or {}
            self.subject_tokens = _compile(subj.get("tokens"), f"{source}: subject.tokens", defs)
            self.first_person = _compile(subj.get("first_person"), f"{source}: subject.first_person", defs)
            self.neutral = [
                Neutral(n["id"], _compile_required(n["pattern"], f"{source}: {n['id']}", defs))
                for n in data.get("neutral") or []
            ]
            self.rules = [
                Rule(
                    id=r["id"],
                    category=r["category"],
                    regex=_compile_required(r["pattern"], f"{source}: {r['id']}", defs),
                    negatable=bool(r.get("negatable", True)),
                    subject=r.get("subject"),
                    within_negation=bool(r.get("within_negation", False)),
                    overrides_neutral=bool(r.get("overrides_neutral", False)),
                )
                for r in data.get("rules") or []
            ]
        except (KeyError, TypeError) as e:
            raise MiLlmError(f"{source}: malformed rule file ({type(e).__name__}: {e})") from None
        ids = [r.id for r in self.rules] + [n.id for n in self.neutral]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise MiLlmError(f"{source}: duplicate rule ids: {', '.join(sorted(dup))}")
        for r in self.rules:
            if r.category not in CATEGORIES:
                raise MiLlmError(f"{source}: rule {r.id}: unknown category {r.category!r}")
            if r.subject not in (None, "first_person"):
                raise MiLlmError(f"{source}: rule {r.id}: subject must be first_person")
            if r.subject and (self.subject_tokens is None or self.first_person is None):
                raise MiLlmError(f"{source}: rule {r.id} needs subject.tokens and subject.first_person")

    def find(self, text: str) -> tuple[list[Match], list[str]]:
        """(matches that count, 'rule:reason' for those that do not) in normalized text."""
        neutral = [(n.id, m.span()) for n in self.neutral for m in n.regex.finditer(text)]
        found: list[Match] = []
        suppressed: list[str] = []
        for rule in self.rules:
            for m in rule.regex.finditer(text):
                a, b = m.span()
                if a == b:
                    continue
                why = self._why_not(rule, text, a, b, neutral)
                if why:
                    suppressed.append(f"{rule.id}:{why}")
                else:
                    found.append(Match(rule.id, rule.category, (a, b)))
        return found, suppressed

    def _why_not(self, rule: Rule, text: str, a: int, b: int, neutral: list[tuple[str, tuple[int, int]]]) -> str | None:
        if not rule.overrides_neutral:
            for nid, (na, nb) in neutral:
                if na < b and a < nb:
                    return nid
        prefix = text[self._clause_start(text, a) : a]
        if rule.negatable:
            if self.neg_prefix is not None and self.neg_prefix.search(prefix):
                return "negated"
            if rule.within_negation and self.neg_within is not None and self.neg_within.search(text[a:b]):
                return "negated"
        if rule.subject == "first_person" and not self._speaker_is_subject(prefix, text[:a]):
            return "not_first_person"
        return None

    def _clause_start(self, text: str, a: int) -> int:
        start = 0
        for m in self.clause_split.finditer(text, 0, a):
            start = m.end()
        return start

    def _speaker_is_subject(self, clause: str, before: str) -> bool:
        """The last subject word before the match is the speaker ('i', '我'), not a third person.

        A clause without a subject (common in Chinese) takes the last one said before it.
        """
        assert self.subject_tokens is not None and self.first_person is not None
        last = None
        for text in (clause, before):
            for m in self.subject_tokens.finditer(text):
                last = m.group(0)
            if last is not None:
                break
        return last is not None and bool(self.first_person.fullmatch(last))


_DEF_REF = re.compile(r"\{\{(\w+)\}\}")


def _unwrap(pattern: str) -> str:
    """Long patterns are broken over lines in the YAML (`|-` blocks): drop the breaks and indents."""
    return re.sub(r"\s*\n\s*", "", str(pattern)).strip()


def _expand(pattern: str | list[str], defs: dict[str, str], where: str) -> str:
    """A list of alternatives becomes one alternation; `{{name}}` inserts a shared definition."""
    if isinstance(pattern, list):
        pattern = "|".join(f"(?:{_unwrap(p)})" for p in pattern)
    if not isinstance(pattern, str):
        raise MiLlmError(f"{where}: a pattern must be a string or a list of strings")
    pattern = _unwrap(pattern)

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in defs:
            raise MiLlmError(f"{where}: unknown definition {{{{{m.group(1)}}}}}")
        return f"(?:{defs[m.group(1)]})"

    for _ in range(5):  # definitions may use earlier definitions
        pattern, n = _DEF_REF.subn(sub, pattern)
        if not n:
            break
    return pattern


def _compile(pattern: str | list[str] | None, where: str, defs: dict[str, str] | None = None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    pattern = _expand(pattern, defs or {}, where)
    try:
        return re.compile(pattern)
    except re.error as e:
        raise MiLlmError(f"{where}: invalid regular expression ({e})") from None


def _compile_required(
    pattern: str | list[str] | None, where: str, defs: dict[str, str] | None = None
) -> re.Pattern[str]:
    compiled = _compile(pattern, where, defs)
    if compiled is None:
        raise MiLlmError(f"{where}: a pattern is required")
    return compiled


def _default_rules_text(language: str) -> tuple[str, str]:
    res = resources.files("mi_llm.serve.safety").joinpath("data", f"rules.{language}.yaml")
    return res.read_text(encoding="utf-8"), f"rules.{language}.yaml"


@lru_cache(maxsize=8)
def _load_default(language: str) -> LanguageRules:
    text, source = _default_rules_text(language)
    return LanguageRules(yaml.safe_load(text), source)


def load_rules(language: str, path: str | Path | None = None) -> LanguageRules:
    """The bundled rules of `language`, or a rule file of the same format at `path`."""
    if path is None:
        if language not in LANGUAGES:
            raise MiLlmError(f"no safety rules for language {language!r}; choose one of: {', '.join(LANGUAGES)}")
        return _load_default(language)
    p = Path(path)
    if not p.is_file():
        raise MiLlmError(f"{p}: no such rule file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MiLlmError(f"{p}: invalid YAML ({e})") from None
    return LanguageRules(data, str(p))


class CrisisClassifier:
    """Classifies one message. Both languages' rules run on every message (a Chinese
    message may quote English and vice versa); `language` only labels the result."""

    def __init__(self, rules: dict[str, LanguageRules] | None = None):
        self.rules = rules or {lang: load_rules(lang) for lang in LANGUAGES}

    def classify(self, text: str, language: str | None = None) -> SafetyResult:
        lang = language if language in LANGUAGES else detect_language(text)
        norm = normalize(text)
        matches: list[Match] = []
        suppressed: list[str] = []
        for rules in self.rules.values():
            found, sup = rules.find(norm)
            matches += found
            suppressed += sup
        if not matches:
            return SafetyResult(crisis=False, category=NONE, language=lang, suppressed=suppressed)
        # Precedence by category, then by position in the text.
        best = min(matches, key=lambda m: (CATEGORIES.index(m.category), m.span[0]))
        cats = [c for c in CATEGORIES if any(m.category == c for m in matches)]
        return SafetyResult(
            crisis=True,
            category=best.category,
            language=lang,
            matched=best.rule,
            span=best.span,
            categories=cats,
            rules=sorted({m.rule for m in matches}),
            suppressed=suppressed,
        )


@lru_cache(maxsize=1)
def default_classifier() -> CrisisClassifier:
    return CrisisClassifier()


def classify(text: str, language: str | None = None) -> SafetyResult:
    """Classify one message with the bundled rules."""
    return default_classifier().classify(text, language)
