"""The safety layer: checks every user message before the model sees it.

A high-risk message (suicide, self-harm, harm to others, abuse) is answered with a fixed
safe response made of the category's message, the crisis resources of the locale and a
closing line, all from `safety/data/resources.<lang>.yaml` (or a reviewed copy in the
folder given by `--safety-resources`). The model is not called for that turn.
A low-risk one (see risk.py) lets the model answer; the layer appends the locale's
check-in (`check_in` and the category's resources) and the turn is flagged all the same.

Not only the newest message: a client may send (or a new session may be seeded with) an
earlier history, and a crisis there must not reach the model unanswered either.
`CheckedMessages` remembers what was checked per conversation, so a long history is
scanned once, not every turn, while any message a client rewrote is new and is checked.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.serve.safety.classifier import (
    CATEGORIES,
    LANGUAGES,
    CrisisClassifier,
    SafetyResult,
)
from mi_llm.serve.safety.risk import RiskClassifier, default_risk_classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrisisResources:
    language: str
    messages: dict[str, str]
    resources: list[dict[str, Any]]
    closing: str
    reviewed: bool
    source: str
    item_format: str = "- {name}: {contact}"
    check_in: str = ""

    def _items(self, category: str) -> str:
        items = [r for r in self.resources if not r.get("categories") or category in r["categories"]]
        return "\n".join(self.item_format.format(name=r["name"], contact=r["contact"]) for r in items)

    def check_in_text(self, category: str) -> str:
        """What is appended to the counselor's answer to a low-risk message."""
        return "\n\n".join(x.strip() for x in (self.check_in, self._items(category)) if x and x.strip())

    def response(self, category: str) -> str:
        """The fixed safe response for `category`."""
        lines = [self.messages.get(category) or self.messages.get("suicide", ""), self._items(category)]
        if self.closing:
            lines.append(self.closing)
        return "\n\n".join(x.strip() for x in lines if x and x.strip())


def load_resources(language: str, directory: str | Path | None = None) -> CrisisResources:
    """`resources.<language>.yaml` from `directory` when it has one, else the bundled file."""
    if directory is not None and (Path(directory) / f"resources.{language}.yaml").is_file():
        path = Path(directory) / f"resources.{language}.yaml"
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        if directory is not None and not Path(directory).is_dir():
            raise MiLlmError(f"{directory}: no such folder (expected resources.<lang>.yaml files in it)")
        res = resources.files("mi_llm.serve.safety").joinpath("data", f"resources.{language}.yaml")
        if not res.is_file():
            raise MiLlmError(f"no crisis resources for language {language!r}")
        text, source = res.read_text(encoding="utf-8"), f"bundled resources.{language}.yaml"
    try:
        data = yaml.safe_load(text) or {}
        msgs = {k: str(v) for k, v in (data.get("messages") or {}).items()}
        items = list(data.get("resources") or [])
        for r in items:
            if not isinstance(r, dict) or not r.get("name") or not r.get("contact"):
                raise ValueError("each resource needs a name and a contact")
            r["contact"] = str(r["contact"])
    except (yaml.YAMLError, ValueError, AttributeError, TypeError) as e:
        raise MiLlmError(f"{source}: invalid crisis resources ({e})") from None
    missing = [c for c in CATEGORIES if c not in msgs]
    if missing:
        raise MiLlmError(f"{source}: messages missing for {', '.join(missing)}")
    fmt = str(data.get("item_format") or "- {name}: {contact}")
    if "{name}" not in fmt or "{contact}" not in fmt:
        raise MiLlmError(f"{source}: item_format must contain {{name}} and {{contact}}")
    check_in = str(data.get("check_in") or "")
    if not check_in and directory is not None:  # a reviewed copy from before check-ins: the bundled text
        check_in = load_resources(language).check_in
    return CrisisResources(
        language, msgs, items, str(data.get("closing") or ""), bool(data.get("reviewed")), source, fmt, check_in
    )


@dataclass
class SafetyDecision:
    result: SafetyResult
    response: str | None  # the safe response when the risk is high (the model is not called)
    check_in: str | None = None  # appended to the model's answer when the risk is low

    @property
    def crisis(self) -> bool:
        return self.result.crisis

    @property
    def level(self) -> str:
        return self.result.level

    def public(self) -> dict[str, Any]:
        """What the client is told (no rule internals)."""
        return {"crisis": self.result.crisis, "category": self.result.category, "level": self.result.level}


class CheckedMessages:
    """Which user messages each conversation (`scope`) has had checked: a bounded LRU of
    digests of (scope, text), never the text. Forgetting one only means checking it again."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(scope: str, text: str) -> bytes:
        return hashlib.sha256(scope.encode("utf-8") + b"\0" + text.encode("utf-8")).digest()

    def seen(self, scope: str, text: str) -> bool:
        key = self._key(scope, text)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
        return False

    def add(self, scope: str, text: str) -> None:
        key = self._key(scope, text)
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class SafetyLayer:
    """`classifier`: anything with classify(text, language[, history]) -> SafetyResult; by
    default the rules OR the learned detector (risk.RiskClassifier)."""

    def __init__(
        self, classifier: CrisisClassifier | RiskClassifier | None = None, resources_dir: str | Path | None = None
    ):
        self.classifier = classifier or default_risk_classifier()
        self.resources = {lang: load_resources(lang, resources_dir) for lang in LANGUAGES}

    def warn_unreviewed(self) -> None:
        for r in self.resources.values():
            if not r.reviewed:
                log.warning(
                    "crisis resources for %r (%s) are not marked reviewed: have them checked for this "
                    "deployment (see docs/serve.md)",
                    r.language,
                    r.source,
                )

    def check(self, text: str, language: str | None = None, history: Sequence[str] = ()) -> SafetyDecision:
        """The decision for `text`; `history`: the user's previous messages, oldest first."""
        if isinstance(self.classifier, RiskClassifier):
            result = self.classifier.classify(text, language, history)
        else:
            result = self.classifier.classify(text, language)
        if not result.crisis:
            return SafetyDecision(result, None)
        # A message written in Chinese gets the Chinese resources whatever the session's language.
        lang = "zh" if detect_language(text) == "zh" else result.language
        res = self.resources[lang if lang in self.resources else "en"]
        if result.level == "low":
            return SafetyDecision(result, None, res.check_in_text(result.category))
        return SafetyDecision(result, res.response(result.category))

    def check_messages(
        self, texts: Sequence[str], language: str | None = None, checked: CheckedMessages | None = None, scope: str = ""
    ) -> tuple[SafetyDecision, int]:
        """The decision for a conversation's user messages (oldest first, the new one last) and
        the index of the message it is about. The new message is checked first (with the
        messages before it as its history), then every earlier one `checked` has not seen in
        `scope`, oldest first. A high risk answers at once; else the first low risk, the new
        message's first. Each message checked is recorded in `checked`."""
        if not texts:
            raise ValueError("no user message to check")
        newest = len(texts) - 1
        latest = self.check(texts[newest], language, texts[:newest])
        if checked is not None:
            checked.add(scope, texts[newest])
        if latest.level == "high":
            return latest, newest
        low: tuple[SafetyDecision, int] | None = (latest, newest) if latest.crisis else None
        for i in range(newest):
            if checked is not None and checked.seen(scope, texts[i]):
                continue
            d = self.check(texts[i], language, texts[:i])
            if checked is not None:
                checked.add(scope, texts[i])
            if d.level == "high":
                return d, i
            if d.crisis and low is None:
                low = (d, i)
        return low or (latest, newest)  # no crisis: the new message's result labels the turn
