"""The better-founded metric family, reported under names distinct from the paper's.

- `sacrebleu`: corpus BLEU of sacreBLEU with the tokenizer of the pair's language
  (`zh`: every Chinese character is a token; `13a`: the WMT standard), so that
  punctuation and spaces do not count as characters the way the paper's BLEU-4 does.
- `distinct-1`, `distinct-2`: distinct n-grams / all n-grams over all predictions
  (Li et al. 2016), a measure of diversity.
- `mean-length`, `mean-length-reference`: tokens per prediction / per reference.
- `repetition-rate`: mean over predictions of 1 - distinct 4-grams / 4-grams within the
  response (seq-rep-4, Welleck et al. 2020); 0 for a response shorter than 4 tokens.
Tokens are sacreBLEU's tokens for the pair's language, so all of these agree with BLEU.
"""

from __future__ import annotations

from mi_llm.corpus.language import detect_language

LANGUAGES = ("zh", "en")
EXTENDED_METRICS: tuple[str, ...] = (
    "sacrebleu",
    "distinct-1",
    "distinct-2",
    "mean-length",
    "mean-length-reference",
    "repetition-rate",
)
REPETITION_N = 4


def assign_languages(predictions: list[str], references: list[str]) -> list[str]:
    """A language per pair, from the reference, else the prediction, else the majority."""
    found = [detect_language(ref, None) or detect_language(pred, None) for pred, ref in zip(predictions, references)]
    known = [lang for lang in found if lang]
    default = max(LANGUAGES, key=known.count) if known else "en"
    return [lang or default for lang in found]


def repetition_rate(tokens: list[str], n: int = REPETITION_N) -> float:
    """1 - distinct n-grams / n-grams within one response (0.0 when it has no n-gram)."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(tokens[i:] for i in range(n)))))
    return 1.0 - distinct / total


class DistinctCounter:
    """Accumulates the distinct and total unigrams and bigrams of many responses."""

    def __init__(self) -> None:
        self.unigrams: set[str] = set()
        self.bigrams: set[tuple[str, str]] = set()
        self.n_unigrams = 0
        self.n_bigrams = 0

    def add(self, tokens: list[str]) -> None:
        self.unigrams.update(tokens)
        self.bigrams.update(zip(tokens, tokens[1:]))
        self.n_unigrams += len(tokens)
        self.n_bigrams += max(0, len(tokens) - 1)

    def merge(self, other: DistinctCounter) -> None:
        self.unigrams |= other.unigrams
        self.bigrams |= other.bigrams
        self.n_unigrams += other.n_unigrams
        self.n_bigrams += other.n_bigrams

    def distinct(self) -> tuple[float, float]:
        d1 = len(self.unigrams) / self.n_unigrams if self.n_unigrams else 0.0
        d2 = len(self.bigrams) / self.n_bigrams if self.n_bigrams else 0.0
        return d1, d2
