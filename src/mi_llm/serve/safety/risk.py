"""Rules OR the learned detector: one risk decision per user message, with a level.

- A rule match is a crisis at level **high** (the rules are precise and reviewed; their
  category wins).
- Else a learned score at or above the detector's `threshold` is a crisis: **high** when the
  score reaches `high_threshold` and the type is not passive ideation, else **low**. With a
  history the message's score read together with it must reach the threshold too (the
  lower of the two decides).
- Else, with the recent history (the user's previous messages, newest last): the message
  read together with them is a crisis when that score reaches the threshold and exceeds
  the score of the message alone and of the history alone (together they say more than
  either: "I bought a rope" after "I can't go on like this"). Such a detection is **low**.

High: the server sends the fixed safe response with crisis resources. Low: the counselor
answers, a check-in is appended and the flag is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from mi_llm.corpus.language import detect_language
from mi_llm.serve.safety.classifier import LANGUAGES, NONE, CrisisClassifier, SafetyResult, default_classifier
from mi_llm.serve.safety.learned import LearnedDetector, default_detector
from mi_llm.serve.safety.sources import COARSE

CONTEXT_MESSAGES = 2  # previous user messages read with the new one


class RiskClassifier:
    """`classify(text, language, history)` -> SafetyResult with level, score and subcategory."""

    def __init__(
        self,
        rules: CrisisClassifier | None = None,
        detector: LearnedDetector | None = None,
        *,
        use_rules: bool = True,
        use_detector: bool = True,
    ):
        self.rules = (rules or default_classifier()) if use_rules else None
        self.detector = (detector or default_detector()) if use_detector else None

    def classify(self, text: str, language: str | None = None, history: Sequence[str] = ()) -> SafetyResult:
        lang = language if language in LANGUAGES else detect_language(text)
        ruled = self.rules.classify(text, lang) if self.rules is not None else None
        if self.detector is None:
            return ruled or SafetyResult(crisis=False, category=NONE, language=lang)
        recent = [h for h in history if h.strip()][-CONTEXT_MESSAGES:]
        texts = [text, "\n".join(recent), "\n".join([*recent, text])] if recent else [text]
        (score, kind), *rest = self.detector.predict(texts)
        det = self.detector
        if ruled is not None and ruled.crisis:
            ruled.score, ruled.detected_by = score, ["rules", *(["learned"] if score >= det.threshold else [])]
            ruled.subcategory = kind if COARSE.get(kind) == ruled.category else None
            return ruled
        base = ruled or SafetyResult(crisis=False, category=NONE, language=lang)
        base.score = score
        alone_history, together, together_kind = (*rest[0][:1], *rest[1]) if rest else (0.0, score, kind)
        # With a history, the message must also read as a crisis in it: "I want to stop"
        # alone scored 0.46, after "I smoke a lot" 0.02.
        if min(score, together) >= det.threshold:
            high = min(score, together) >= det.high_threshold and kind != "passive_ideation"
            return self._learned(base, kind, "high" if high else "low", "learned")
        if rest and together >= det.threshold and together > max(score, alone_history):
            return self._learned(base, together_kind, "low", "context")
        return base

    @staticmethod
    def _learned(base: SafetyResult, kind: str, level: str, how: str) -> SafetyResult:
        base.crisis, base.level, base.subcategory = True, level, kind
        base.category = COARSE.get(kind, "suicide")
        base.matched, base.detected_by = f"{how}.{kind}", [how]
        return base


@lru_cache(maxsize=1)
def default_risk_classifier() -> RiskClassifier:
    return RiskClassifier()
