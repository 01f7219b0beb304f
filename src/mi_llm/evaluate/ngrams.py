"""Clipped n-gram matches of many hypothesis/reference pairs at once, with numpy.

BLEU (nltk's, on characters, and sacreBLEU's, on tokens) needs, for each pair and each
order n, sum over n-grams g of min(count of g in the hypothesis, count in the reference).
Counting with Python Counters costs a new string or tuple per n-gram; here every n-gram
becomes an integer (its tokens' ids, re-numbered densely order after order so nothing
overflows), prefixed by its pair's index, and the counts come from sorting. Integer
arithmetic only: the counts are exact, so BLEU computed from them is the same float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class NgramCounts:
    matches: np.ndarray  # [pairs, max_n]: clipped matches of order n
    distinct_hyp: np.ndarray  # [pairs, max_n]: distinct n-grams in the hypothesis


def char_ids(texts: Sequence[str]) -> list[np.ndarray]:
    """Each text as an array of code points (what `list(text)` holds, as integers)."""
    joined = "".join(texts).encode("utf-32-le", "surrogatepass")
    flat = np.frombuffer(joined, dtype="<u4").astype(np.int64)
    ends = np.cumsum([len(t) for t in texts])
    return np.split(flat, ends[:-1]) if len(texts) else []


def _side(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated ids, each position's pair index, and whether n more tokens follow."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    ids = np.concatenate(arrays).astype(np.int64, copy=False) if lengths.sum() else np.zeros(0, np.int64)
    pair = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    left = np.repeat(starts + lengths, lengths) - np.arange(len(ids), dtype=np.int64)  # tokens from here to the end
    return ids, pair, left


def clipped_matches(hyps: Sequence[np.ndarray], refs: Sequence[np.ndarray], max_n: int = 4) -> NgramCounts:
    """Clipped n-gram matches (orders 1..max_n) of each pair hyps[i] / refs[i] of integer ids."""
    n_pairs = len(hyps)
    matches = np.zeros((n_pairs, max_n), dtype=np.int64)
    distinct = np.zeros((n_pairs, max_n), dtype=np.int64)
    h_ids, h_pair, h_left = _side(hyps)
    r_ids, r_pair, r_left = _side(refs)
    n_h = len(h_ids)
    if n_h == 0:
        return NgramCounts(matches, distinct)
    # order 1: dense ids shared by both sides
    vocab, inv = np.unique(np.concatenate([h_ids, r_ids]), return_inverse=True)
    tok_h, tok_r = inv[:n_h].astype(np.int64), inv[n_h:].astype(np.int64)
    base = max(len(vocab), 1)
    gram_h, gram_r = tok_h.copy(), tok_r.copy()  # gram of the current order starting at each position
    for n in range(1, max_n + 1):
        ok_h = np.nonzero(h_left >= n)[0]
        ok_r = np.nonzero(r_left >= n)[0]
        if n > 1:
            raw_h = gram_h[ok_h] * base + tok_h[ok_h + n - 1]
            raw_r = gram_r[ok_r] * base + tok_r[ok_r + n - 1]
            _, dense = np.unique(np.concatenate([raw_h, raw_r]), return_inverse=True)
            gram_h[ok_h] = dense[: len(ok_h)]
            gram_r[ok_r] = dense[len(ok_h) :]
            n_grams = int(dense.max()) + 1 if len(dense) else 1
        else:
            n_grams = base
        if len(ok_h) == 0:
            break
        key_h = h_pair[ok_h] * n_grams + gram_h[ok_h]
        key_r = r_pair[ok_r] * n_grams + gram_r[ok_r]
        uh, ch = np.unique(key_h, return_counts=True)
        ur, cr = np.unique(key_r, return_counts=True)
        distinct[:, n - 1] = np.bincount(uh // n_grams, minlength=n_pairs)
        common, ih, ir = np.intersect1d(uh, ur, assume_unique=True, return_indices=True)
        if len(common):
            np.add.at(matches[:, n - 1], common // n_grams, np.minimum(ch[ih], cr[ir]))
    return NgramCounts(matches, distinct)
