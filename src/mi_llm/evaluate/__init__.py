"""Evaluation: predictions against references.

`compute_metrics(predictions, references, languages=None)` and `evaluate_file(path, ...)`
(in `mi_llm.evaluate.metrics`) compute the paper's LLaMA-Factory-compatible BLEU-4 /
ROUGE and the better-founded extended family. They are exported lazily, so importing
`mi_llm.evaluate.predict` does not load jieba, nltk or sacreBLEU.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_metrics", "evaluate_file", "PAPER_METRICS", "EXTENDED_METRICS"]


def __getattr__(name: str) -> Any:
    if name in ("compute_metrics", "evaluate_file"):
        from mi_llm.evaluate import metrics

        return getattr(metrics, name)
    if name == "PAPER_METRICS":
        from mi_llm.evaluate.paper import PAPER_METRICS

        return PAPER_METRICS
    if name == "EXTENDED_METRICS":
        from mi_llm.evaluate.extended import EXTENDED_METRICS

        return EXTENDED_METRICS
    raise AttributeError(f"module 'mi_llm.evaluate' has no attribute {name!r}")
