"""The paper's BLEU-4 and ROUGE, exactly as LLaMA-Factory's SFT prediction metrics compute them.

Definition (see docs/evaluate.md): ROUGE-1/2/L F-scores of `rouge-chinese` 1.0.3 on jieba
tokens (n-grams counted as sets, F = 2PR/(P+R+1e-8)), 0 for a pair whose prediction or
reference has no non-blank token; BLEU-4 from nltk's `sentence_bleu` on raw characters
with smoothing method 3. Every per-pair score is `round(value * 100, 4)`; the corpus
figure is the plain mean of those rounded scores.

Two implementations live here:
- `reference_pair_scores` calls jieba, rouge-chinese and nltk exactly as LLaMA-Factory
  does. It is the ground truth (and is slow: pure-Python O(n*m) LCS tables, Fractions).
- `paper_pair_scores` does the same arithmetic faster: set sizes for ROUGE-N, a
  bit-parallel LCS for ROUGE-L, string-slice n-gram counts for BLEU, performing the same
  floating-point operations in the same order, so the floats are identical. The tests
  compare the two on many random and edge-case strings.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

PAPER_METRICS: tuple[str, ...] = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
"""Names as LLaMA-Factory writes them (it prefixes `predict_` / `eval_` in its results)."""

log = logging.getLogger(__name__)


class PaperScores(NamedTuple):
    """One pair's scores, each already `round(value * 100, 4)`."""

    bleu4: float
    rouge1: float
    rouge2: float
    rougel: float

    def as_dict(self) -> dict[str, float]:
        return dict(zip(PAPER_METRICS, (float(x) for x in self)))


@lru_cache(maxsize=1)
def jieba_tokenizer():  # -> jieba.Tokenizer
    """A private jieba tokenizer with jieba's default dictionary, loaded once per process.

    Private so that words another component adds to jieba's global dictionary cannot
    change the metric.
    """
    import jieba

    jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading otherwise
    tok = jieba.Tokenizer()
    tok.initialize()
    return tok


_BLOCK_CACHE_LIMIT = 200_000


class JiebaCutter:
    """`jieba.Tokenizer.cut` (accurate mode, HMM on), faster, with identical output.

    jieba segments a text block by block (runs of Han characters, letters and digits,
    split at punctuation and spaces), and a block's words depend on the block alone. Blocks
    repeat a lot across responses (every English word is a block), so their segmentation
    is memoised. `__call__` is jieba 0.42.1's `Tokenizer.cut` with `cut_all=False,
    HMM=True`, and `_cut_block` its `__cut_DAG` with leaner bookkeeping (jieba has had no
    release since 0.42.1, in 2020). The tests compare the output with `jieba.lcut`.
    """

    def __init__(self) -> None:
        import jieba
        import jieba.finalseg

        tok = jieba_tokenizer()
        self._re_han = jieba.re_han_default
        self._re_skip = jieba.re_skip_default
        self._freq: dict[str, int] = tok.FREQ
        self._logtotal = math.log(tok.total)
        self._hmm_cut = jieba.finalseg.cut
        self._logp: dict[str, float] = {}
        self._cache: dict[str, list[str]] = {}

    def _cut_block(self, sentence: str) -> list[str]:
        """jieba's `__cut_DAG`: the most probable path through the dictionary DAG; runs of
        unknown single characters go to jieba's HMM.

        jieba builds the DAG (`get_DAG`), then scores it (`calc`): route[idx] = max over
        the words w = sentence[idx:x+1] of (log(FREQ[w] or 1) - log(total) + route[x+1][0], x).
        Here both happen in one backward pass, with each word's log-probability memoised;
        candidates come in the same order and the sums are the same floating-point
        operations, so the route (ties included) is jieba's."""
        freq, logp, logtotal, log = self._freq, self._logp, self._logtotal, math.log
        n = len(sentence)
        route: list[tuple[float, int]] = [(0, 0)] * (n + 1)
        for idx in range(n - 1, -1, -1):
            best = None
            i = idx
            frag = sentence[idx]
            while i < n:
                f = freq.get(frag)  # None: no word starts so; 0: only a prefix of words
                if f is None:
                    break
                if f:
                    lp = logp.get(frag)
                    if lp is None:
                        lp = logp[frag] = log(f) - logtotal
                    cand = (lp + route[i + 1][0], i)
                    if best is None or cand > best:  # as max(): the tuples always differ in i
                        best = cand
                i += 1
                frag = sentence[idx : i + 1]
            if best is None:  # no dictionary word starts here: the character alone
                char = sentence[idx]
                lp = logp.get(char)
                if lp is None:
                    lp = logp[char] = log(freq.get(char) or 1) - logtotal
                best = (lp + route[idx + 1][0], idx)
            route[idx] = best
        words: list[str] = []
        x = 0
        buf = ""
        while x < n:
            y = route[x][1] + 1
            word = sentence[x:y]
            if y - x == 1:
                buf += word
            else:
                if buf:
                    self._flush(buf, words)
                    buf = ""
                words.append(word)
            x = y
        if buf:
            self._flush(buf, words)
        return words

    def _flush(self, buf: str, words: list[str]) -> None:
        # A run of single characters: one character as is, an unknown run through the
        # HMM, a dictionary word's characters one by one (jieba's rules).
        if len(buf) == 1:
            words.append(buf)
        elif not self._freq.get(buf):
            words.extend(self._hmm_cut(buf))
        else:
            words.extend(buf)

    def __call__(self, text: str) -> list[str]:
        re_han, re_skip, cache = self._re_han, self._re_skip, self._cache
        out: list[str] = []
        for blk in re_han.split(text):
            if not blk:
                continue
            if re_han.match(blk):
                words = cache.get(blk)
                if words is None:
                    words = self._cut_block(blk)
                    if len(cache) < _BLOCK_CACHE_LIMIT:
                        cache[blk] = words
                out.extend(words)
            else:
                for x in re_skip.split(blk):
                    if re_skip.match(x):
                        out.append(x)
                    else:
                        out.extend(x)
        return out


@lru_cache(maxsize=1)
def _cutter() -> JiebaCutter:
    return JiebaCutter()


def jieba_tokens(text: str) -> list[str]:
    """jieba's default segmentation (accurate mode, HMM on); whitespace runs are tokens too."""
    return _cutter()(text)


# --- ROUGE as rouge-chinese 1.0.3 computes it ----------------------------------------

# Rouge.cut_sent's sentence splitting; the splits add no tokens but whitespace-only
# "sentences" become empty-string words, which then count as words.
_CUT_SENT = (
    (re.compile(r"([。！？\?])([^”’])"), r"\1\n\2"),
    (re.compile(r"(\.{6})([^”’])"), r"\1\n\2"),
    (re.compile(r"(\…{2})([^”’])"), r"\1\n\2"),
    (re.compile(r"([。！？\?][”’])([^，。！？\?])"), r"\1\n\2"),
)


_CUT_SENT_NEEDS = (("。", "！", "？", "?"), ("......",), ("……",), ("。", "！", "？", "?"))


def rouge_words(joined: str) -> list[str]:
    """The word list rouge-chinese scores for the text `" ".join(tokens)`."""
    para = joined
    for (pattern, repl), needed in zip(_CUT_SENT, _CUT_SENT_NEEDS):
        if any(s in para for s in needed):  # a rule without its marks leaves the text as is
            para = pattern.sub(repl, para)
    words: list[str] = []
    for sent in para.rstrip().split("\n"):
        if len(sent) > 0:
            words.extend(" ".join(sent.split()).split(" "))
    return words


def _f_score(overlap: int, evaluated: int, reference: int) -> float:
    # rouge_score.f_r_p_rouge_n, operation for operation.
    precision = 0.0 if evaluated == 0 else overlap / evaluated
    recall = 0.0 if reference == 0 else overlap / reference
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Hyyrö 2004)."""
    if not a or not b:
        return 0
    if len(a) < len(b):  # bits over the longer sequence: fewer big-int steps
        a, b = b, a
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_from_words(hyp: list[str], ref: list[str]) -> tuple[float, float, float]:
    """Raw (unrounded) ROUGE-1, ROUGE-2, ROUGE-L F of rouge-chinese for non-empty word lists."""
    h1, r1 = set(hyp), set(ref)
    h2, r2 = set(zip(hyp, hyp[1:])), set(zip(ref, ref[1:]))
    f1 = _f_score(len(h1 & r1), len(h1), len(r1))
    f2 = _f_score(len(h2 & r2), len(h2), len(r2))
    # rouge_l_summary_level on a single pair is the plain LCS over all words.
    llcs = lcs_length(ref, hyp)
    m, n = len(ref), len(hyp)
    r_lcs = llcs / m
    p_lcs = llcs / n
    fl = 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))
    return f1, f2, fl


def rouge_from_tokens(hyp_tokens: list[str], ref_tokens: list[str]) -> tuple[float, float, float]:
    """Raw ROUGE F-scores from jieba tokens, with LLaMA-Factory's empty-text rule."""
    hyp_joined, ref_joined = " ".join(hyp_tokens), " ".join(ref_tokens)
    if not hyp_joined.split() or not ref_joined.split():
        return 0.0, 0.0, 0.0
    return rouge_from_words(rouge_words(hyp_joined), rouge_words(ref_joined))


# --- BLEU-4 as nltk's sentence_bleu(method3) computes it on characters ---------------


def _ngram_counts(text: str, n: int) -> Counter[str]:
    if n == 1:
        return Counter(text)
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def bleu4_chars(prediction: str, reference: str) -> float:
    """Raw nltk sentence BLEU-4 (smoothing method 3) of `prediction` against one reference,
    both as character sequences."""
    matches = []
    for n in (1, 2, 3, 4):
        if len(prediction) < n:
            matches.append(0)
            continue
        hyp_counts = _ngram_counts(prediction, n)
        ref_counts = _ngram_counts(reference, n) if len(reference) >= n else Counter()
        matches.append(sum(min(c, ref_counts[g]) for g, c in hyp_counts.items() if g in ref_counts))
    return bleu4_from_matches(matches, len(prediction), len(reference))


def bleu4_from_matches(matches: Sequence[int], hyp_len: int, ref_len: int) -> float:
    """nltk's sentence BLEU-4 with smoothing method 3, from the clipped n-gram matches
    (orders 1-4) and the lengths; the same floating-point operations as nltk."""
    if matches[0] == 0:
        return 0.0  # nltk: no unigram matches, BLEU 0
    if hyp_len > ref_len:
        bp = 1.0
    else:  # hyp_len > 0 here, since a unigram matched
        bp = math.exp(1 - ref_len / hyp_len)
    # method3: the k-th zero precision becomes 1 / (2**k * denominator)
    k = 1
    log_terms = []
    for n, num in enumerate(matches, start=1):
        den = max(1, hyp_len - n + 1)  # nltk: max(1, number of hypothesis n-grams)
        if num == 0:
            p = 1 / (2**k * den)
            k += 1
        else:
            p = num / den  # float(Fraction(num, den)): correctly rounded either way
        log_terms.append(0.25 * math.log(p))
    return bp * math.exp(math.fsum(log_terms))


def as_percent(value: float) -> float:
    """LLaMA-Factory's per-pair rounding: round(value * 100, 4)."""
    return round(value * 100, 4)


def paper_pair_scores(
    prediction: str,
    reference: str,
    pred_tokens: list[str] | None = None,
    ref_tokens: list[str] | None = None,
) -> PaperScores:
    """The paper's per-pair scores (fast path); pass jieba tokens when already computed."""
    if pred_tokens is None:
        pred_tokens = jieba_tokens(prediction)
    if ref_tokens is None:
        ref_tokens = jieba_tokens(reference)
    r1, r2, rl = rouge_from_tokens(pred_tokens, ref_tokens)
    bleu = bleu4_chars(prediction, reference)
    return PaperScores(as_percent(bleu), as_percent(r1), as_percent(r2), as_percent(rl))


def reference_pair_scores(prediction: str, reference: str) -> PaperScores:
    """The per-pair scores computed by calling the libraries exactly as LLaMA-Factory
    (src/llamafactory/train/sft/metric.py, ComputeSimilarity) does."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    hypothesis = list(jieba.cut(prediction))
    ref = list(jieba.cut(reference))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(ref).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge()
        result = rouge.get_scores(" ".join(hypothesis), " ".join(ref))[0]
    bleu_score = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return PaperScores(
        as_percent(bleu_score),
        as_percent(result["rouge-1"]["f"]),
        as_percent(result["rouge-2"]["f"]),
        as_percent(result["rouge-l"]["f"]),
    )
