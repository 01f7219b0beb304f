"""The paper's metrics must equal LLaMA-Factory's to the 4th decimal; ours must equal the libraries."""

from __future__ import annotations

import random

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.evaluate import compute_metrics, sacre
from mi_llm.evaluate.extended import DistinctCounter, assign_languages, repetition_rate
from mi_llm.evaluate.ngrams import char_ids, clipped_matches
from mi_llm.evaluate.paper import (
    JiebaCutter,
    bleu4_chars,
    lcs_length,
    paper_pair_scores,
    reference_pair_scores,
)
from tests.conftest import shared_data_dir

# --- strings: random, edge cases, realistic --------------------------------------------

ZH_WORDS = "我 你 他 觉得 最近 压力 很大 工作 睡眠 不好 想 聊聊 吗 好的 嗯 其实 改变 戒烟 喝酒 运动 身体 健康 担心 家人 朋友 重要 目标 一点 试试 可以 愿意 为什么 怎么 什么 感受 理解 听起来 似乎 希望 好好 的 了 是 不 也 都".split()
EN_WORDS = "I you we it feel think really want to quit smoking drink less stress work sleep family health change maybe sounds like that's important what would how about okay yes no the a and but so".split()
PUNCT = list("，。！？；：、“”‘’…—,.!?;:'\"()-[]/&%#@")
SPACES = [" ", "  ", "\n", "\t", "\u3000", "\xa0", " \n ", "\r\n"]
EMOJI = ["😀", "🙂", "👍🏽", "❤️", "🚭", "𠀀"]
SPECIAL = ["......", "……", "。”", "？’", "！”你", "?", "...", "好好好好", "  ", "", "\ud83d", "e\u0301"]


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    n = rng.choice([0, 1, 1, 2, 3, 5, 8, 15, 30, 60])
    parts = []
    for _ in range(n):
        r = rng.random()
        if kind < 0.4:
            pool = ZH_WORDS if r < 0.75 else PUNCT if r < 0.9 else SPACES if r < 0.95 else EMOJI + SPECIAL
        elif kind < 0.7:
            pool = EN_WORDS if r < 0.75 else PUNCT if r < 0.85 else [" "] if r < 0.97 else EMOJI + SPECIAL
        else:
            pool = ZH_WORDS + EN_WORDS + PUNCT + SPACES + EMOJI + SPECIAL
        parts.append(rng.choice(pool))
        if kind >= 0.4 and kind < 0.7 and rng.random() < 0.8:
            parts.append(" ")
    return "".join(parts)


def _mutate(text: str, rng: random.Random) -> str:
    """A prediction that shares much of the reference (high overlaps, repeats, reorderings)."""
    chars = list(text)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        i = rng.randint(0, len(chars))
        if op < 0.4 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op < 0.7:
            chars.insert(i, rng.choice(ZH_WORDS + EN_WORDS + PUNCT + [" "]))
        else:
            chars[i:i] = chars[: rng.randint(0, 6)]  # repeat a stretch
    return "".join(chars)


EDGE_PAIRS = [
    ("", ""),
    ("", "你好"),
    ("你好", ""),
    ("   ", "   "),
    (" ", "你好"),
    ("\n\n", "ok"),
    ("\u3000", "你好"),
    ("好", "好"),
    ("好", "坏"),
    ("a", "a"),
    ("A", "a"),
    ("ok", "ok"),
    ("？", "？"),
    ("。。。", "。"),
    ("!!!", "?"),
    ("😀", "😀"),
    ("😀😀", "🙂"),
    ("你好😀", "你好🙂"),
    ("......", "……"),
    ("好的。”你呢？’嗯", "好的。”你呢？’嗯"),
    ("I feel 压力 so much", "我 feel 压力"),
    ("好好好好好好好好", "好的"),
    ("  你想聊聊吗？  ", "你想聊聊吗？"),
    ("你想聊聊吗？", "  你想聊聊吗？  "),
    ("line one\n \nline two", "line one\n\nline two"),
    ("a\n \nb", "a b"),
    ("It's   okay.", "It is okay."),
    ("Hello, world!", "hello world"),
    ("你。 。你", "你。你"),
    ("听起来你最近压力很大，睡眠也不好。", "听起来你最近压力很大。你愿意聊聊睡眠吗？"),
]


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = list(EDGE_PAIRS)
    while len(pairs) < n:
        ref = _random_text(rng)
        pred = _mutate(ref, rng) if rng.random() < 0.5 else _random_text(rng)
        pairs.append((pred, ref))
    return pairs


def _real_texts(limit: int) -> list[str]:
    """Counselor turns from CPsyCounD and AnnoMI when ../shared/data is there."""
    root = shared_data_dir()
    texts: list[str] = []
    for f in sorted((root / "cpsycound" / "CPsyCounD").glob("case_*.txt"))[:40]:
        texts += [
            line[6:].strip() for line in f.read_text(encoding="utf-8").splitlines() if line.startswith("心理咨询师：")
        ]
    csv_path = root / "annomi" / "AnnoMI-simple.csv"
    if csv_path.is_file():
        import csv

        with open(csv_path, encoding="utf-8") as fh:
            texts += [r["utterance_text"] for r, _ in zip(csv.DictReader(fh), range(400))]
    return texts[:limit]


# --- the doc's pinned rows (docs/metrics.md, from the reference implementation) -----------

PINNED = [
    # prediction, reference, BLEU-4, R-1, R-2, R-L
    ("", "你好，最近怎么样？", 0, 0, 0, 0),
    ("   ", "你好，最近怎么样？", 0, 0, 0, 0),
    ("", "any reference", 0, 0, 0, 0),
    ("好", "好", 35.3553, 100, 0, 100),
    ("  你想聊聊吗？  ", "你想聊聊吗？", 51.6973, 100, 100, 100),
    ("好好好好好好好好", "好的", 5.5224, 0, 0, 0),
    # blank text scores ROUGE 0, but its spaces are characters for BLEU: p1 = p2 = 1,
    # p3 = 1/2, p4 = 1/4 (method 3), BP = exp(1 - 4/2) -> 21.8742
    ("  ", "a  b", 21.8742, 0, 0, 0),
]


@pytest.mark.parametrize("pred,ref,bleu,r1,r2,rl", PINNED)
@pytest.mark.parametrize("score", [paper_pair_scores, reference_pair_scores], ids=["fast", "reference"])
def test_pinned_rows(score, pred, ref, bleu, r1, r2, rl):
    assert tuple(score(pred, ref)) == (bleu, r1, r2, rl)


def test_pinned_rows_through_the_corpus_path():
    # compute_metrics scores pairs in batches (vectorised n-gram counts): same numbers
    m = compute_metrics([p for p, *_ in PINNED], [r for _, r, *_ in PINNED], per_sample=True)
    got = [tuple(s["paper"].values()) for s in m["per_sample"]]
    assert got == [tuple(float(x) for x in row[2:]) for row in PINNED]


def test_identical_text_quirks():
    # F = 2PR/(P+R+1e-8): identical texts give 99.9999995 before rounding -> 100.0
    s = paper_pair_scores("我想戒烟，但是很难。", "我想戒烟，但是很难。")
    assert s.bleu4 == 100.0 and s.rouge1 == 100.0 and s.rougel == 100.0
    # ROUGE counts n-gram SETS: repeating a matching word earns nothing more
    once = paper_pair_scores("戒烟", "戒烟 运动")
    thrice = paper_pair_scores("戒烟 戒烟 戒烟", "戒烟 运动")
    assert thrice.rouge1 == once.rouge1
    # BLEU is on characters, case-sensitive
    assert paper_pair_scores("Okay", "okay").bleu4 < 100


# --- fast == reference, pair by pair ----------------------------------------------------


def test_fast_equals_reference_on_random_and_edge_pairs():
    pairs = _pairs(1500, seed=7)
    mismatches = [(p, r) for p, r in pairs if paper_pair_scores(p, r) != reference_pair_scores(p, r)]
    assert not mismatches, mismatches[:5]


def test_fast_equals_reference_on_real_counselor_turns():
    texts = _real_texts(600)
    if len(texts) < 100:
        pytest.skip(f"real data not available under {shared_data_dir()}")
    rng = random.Random(3)
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(300)]
    pairs += [(_mutate(t, rng), t) for t in texts[:200]]
    for p, r in pairs:
        assert paper_pair_scores(p, r) == reference_pair_scores(p, r), (p, r)


def test_raw_bleu_is_nltk_float_for_float():
    smooth = SmoothingFunction().method3
    for p, r in _pairs(400, seed=11):
        assert bleu4_chars(p, r) == sentence_bleu([list(r)], list(p), smoothing_function=smooth)


def test_jieba_cutter_equals_jieba():
    cutter = JiebaCutter()
    texts = [p for pair in _pairs(800, seed=5) for p in pair] + _real_texts(800)
    for t in texts:
        assert cutter(t) == jieba.lcut(t), t
        assert cutter(t) == jieba.lcut(t)  # second time from the block cache


def _clipped_by_counter(h, r, n):
    from collections import Counter

    ch = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
    cr = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
    return sum(min(c, cr[g]) for g, c in ch.items()), len(ch)


def test_vectorised_ngram_matches_equal_counters():
    rng = random.Random(2)
    hyps, refs = [], []
    for _ in range(300):
        vocab = rng.randint(1, 6)
        hyps.append([rng.randrange(vocab) * 1000 for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 9, 30]))])
        refs.append([rng.randrange(vocab + 2) * 1000 for _ in range(rng.choice([0, 1, 2, 3, 4, 7, 30]))])
    counts = clipped_matches([np.array(h, np.int64) for h in hyps], [np.array(r, np.int64) for r in refs])
    for i, (h, r) in enumerate(zip(hyps, refs)):
        for n in range(1, 5):
            assert (counts.matches[i, n - 1], counts.distinct_hyp[i, n - 1]) == _clipped_by_counter(h, r, n)
    empty = clipped_matches([np.zeros(0, np.int64)], [np.array([1, 2], np.int64)])
    assert empty.matches.tolist() == [[0, 0, 0, 0]]


def test_char_ids_are_code_points():
    texts = ["", "a好😀", "\ud800x", "e\u0301"]
    assert [a.tolist() for a in char_ids(texts)] == [[ord(c) for c in t] for t in texts]


def _lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs():
    rng = random.Random(1)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


# --- sacreBLEU: ours == the library ------------------------------------------------------


def test_fast_sacrebleu_tokenizers_equal_library_on_every_bmp_character():
    lib_zh, lib_13a = TokenizerZh(), Tokenizer13a()
    fast_zh, fast_13a = sacre.tokenizer("zh"), sacre.tokenizer("13a")
    for start in range(0, 0x10000, 64):
        block = "".join(chr(cp) for cp in range(start, start + 64) if not 0xD800 <= cp < 0xE000)
        line = f"x{block} 3.5, a-b. 1-2 end."
        assert fast_zh(line) == lib_zh(line), hex(start)
        assert fast_13a(line) == lib_13a(line), hex(start)
    for p, r in _pairs(600, seed=9):
        for text in (p, r):
            assert fast_zh(text) == lib_zh(text) and fast_13a(text) == lib_13a(text), text


@pytest.mark.parametrize("tok", ["zh", "13a"])
def test_fast_sacrebleu_equals_library(tok):
    pairs = _pairs(500, seed=13) + [(t, u) for t, u in zip(_real_texts(300), reversed(_real_texts(300)))]
    hyps, refs = [p for p, _ in pairs], [r for _, r in pairs]
    lib = BLEU(tokenize=tok).corpus_score(hyps, [refs])
    stats = sacre.sum_stats(
        [sacre.segment_stats(sacre.bleu_tokens(h, tok), sacre.bleu_tokens(r, tok)) for h, r in zip(hyps, refs)]
    )
    ours = sacre.bleu_from_stats(stats)
    assert (ours.score, ours.counts, ours.totals, ours.sys_len, ours.ref_len) == (
        lib.score,
        lib.counts,
        lib.totals,
        lib.sys_len,
        lib.ref_len,
    )
    sentence = BLEU(tokenize=tok, effective_order=True)
    for h, r in pairs[:200]:
        st = sacre.segment_stats(sacre.bleu_tokens(h, tok), sacre.bleu_tokens(r, tok))
        assert sacre.bleu_from_stats(st, effective_order=True).score == sentence.sentence_score(h, [r]).score


# --- corpus figures ----------------------------------------------------------------------


def _mixed_corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    pairs = _pairs(n, seed)
    return [p for p, _ in pairs], [r for _, r in pairs]


def test_corpus_paper_figures_are_plain_means_of_rounded_pair_scores():
    preds, refs = _mixed_corpus(120, seed=21)
    m = compute_metrics(preds, refs)
    per_pair = [reference_pair_scores(p, r) for p, r in zip(preds, refs)]
    for i, key in enumerate(("bleu-4", "rouge-1", "rouge-2", "rouge-l")):
        assert m["paper"][key] == float(np.mean([s[i] for s in per_pair]))
    assert m["n_pairs"] == 120


def test_fast_and_reference_implementations_agree_on_everything():
    preds, refs = _mixed_corpus(250, seed=17)
    fast = compute_metrics(preds, refs, per_sample=True, workers=1)
    ref = compute_metrics(preds, refs, per_sample=True, implementation="reference")
    assert fast.pop("implementation") == "fast" and ref.pop("implementation") == "reference"
    assert fast == ref


def test_parallel_equals_serial():
    preds, refs = _mixed_corpus(450, seed=19)
    serial = compute_metrics(preds, refs, per_sample=True, workers=1)
    parallel = compute_metrics(preds, refs, per_sample=True, workers=2)
    assert serial == parallel


def test_families_are_separate_and_languages_broken_down():
    preds = ["我想少喝点酒。", "I want to drink less.", "我想戒烟", "Maybe next week."]
    refs = ["你想少喝一点酒。", "You want to drink less.", "你想戒烟吗？", "Maybe next week?"]
    m = compute_metrics(preds, refs)
    assert set(m["paper"]) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l"}
    assert set(m["extended"]) == {
        "sacrebleu",
        "distinct-1",
        "distinct-2",
        "mean-length",
        "mean-length-reference",
        "repetition-rate",
    }
    assert m["languages"] == {"zh": 2, "en": 2}
    assert m["by_language"]["zh"]["n_pairs"] == 2
    assert "tok:zh+13a" in m["sacrebleu"]["signature"]
    assert "tok:13a" in m["by_language"]["en"]["sacrebleu"]["signature"]
    # the per-language paper figure is the mean over that language's pairs only
    zh_bleu = np.mean([paper_pair_scores(p, r).bleu4 for p, r in zip(preds[::2], refs[::2])])
    assert m["by_language"]["zh"]["paper"]["bleu-4"] == pytest.approx(zh_bleu, abs=1e-12)
    one = compute_metrics(preds[::2], refs[::2])
    assert "by_language" not in one and one["languages"] == {"zh": 2}


def test_given_languages_override_detection():
    m = compute_metrics(["ok ok"], ["ok"], ["zh"])
    assert m["languages"] == {"zh": 1} and "tok:zh" in m["sacrebleu"]["signature"]
    with pytest.raises(MiLlmError, match="unsupported language"):
        compute_metrics(["a"], ["b"], ["fr"])


def test_input_errors():
    with pytest.raises(MiLlmError, match="no prediction"):
        compute_metrics([], [])
    with pytest.raises(MiLlmError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"])
    with pytest.raises(MiLlmError, match="not text"):
        compute_metrics([None], ["a"])  # type: ignore[list-item]


# --- the extended family's definitions ---------------------------------------------------


def test_detect_language():
    assert detect_language("你好，最近怎么样？") == "zh"
    assert detect_language("How have you been?") == "en"
    assert detect_language("我觉得OK") == "zh"
    assert detect_language("I really love 你 and everything else here") == "en"
    assert detect_language("😀 ... 123", None) is None and detect_language("😀 ... 123") == "en"
    assert assign_languages(["", "你好", "?"], ["...", "", ""]) == ["zh", "zh", "zh"]


def test_distinct_repetition_and_length_by_hand():
    d = DistinctCounter()
    d.add("a b a b".split())
    d.add("a c".split())
    # unigrams: a b a b a c -> 3 distinct of 6; bigrams: ab ba ab ac -> 3 of 4
    assert d.distinct() == (0.5, 0.75)
    assert repetition_rate("a b c d a b c d".split()) == 1 - 4 / 5
    assert repetition_rate("a b c".split()) == 0.0
    m = compute_metrics(["a b a b", "a c"], ["a b", "a b c"], ["en", "en"])
    assert m["extended"]["distinct-1"] == 0.5 and m["extended"]["distinct-2"] == 0.75
    assert m["extended"]["mean-length"] == 3.0 and m["extended"]["mean-length-reference"] == 2.5
    assert m["n_empty_predictions"] == 0
    zh = compute_metrics(["你好你好", ""], ["你好", "嗯"], ["zh", "zh"])
    assert zh["extended"]["mean-length"] == 2.0  # zh tokenizer: one token per character
    assert zh["n_empty_predictions"] == 1
