"""The safety layer in front of the counselor model: crisis detection and safe responses."""

from mi_llm.corpus.language import detect_language
from mi_llm.serve.safety.classifier import (
    CATEGORIES,
    NONE,
    CrisisClassifier,
    SafetyResult,
    classify,
    default_classifier,
)

__all__ = [
    "CATEGORIES",
    "NONE",
    "CrisisClassifier",
    "SafetyResult",
    "classify",
    "default_classifier",
    "detect_language",
]
