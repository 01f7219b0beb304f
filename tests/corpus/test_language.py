"""The one language guess (`mi_llm.corpus.language.detect_language`), and that it classifies
the bundled demo corpus exactly as each of the four guesses it replaced did (issue 16).

The old guesses are frozen here, as they were, so the check keeps meaning something:
- importers: zh when CJK * 5 >= Latin letters (over a dialogue's turns), the one kept;
- metrics (evaluate.extended): zh when CJK * 4 >= Latin letters, None without either;
- safety (serve.safety.classifier): zh when the text has any CJK character;
- MITI coders (miti.coders.segment): zh when U+4E00..U+9FFF are >= 30% of the letters.
"""

from __future__ import annotations

import re

import pytest

from mi_llm.corpus.language import LATIN_PER_CJK, detect_language
from mi_llm.resources import demo_dialogues

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def old_importers(texts):
    cjk = latin = 0
    for t in texts:
        cjk += len(_CJK.findall(t))
        latin += len(_LATIN.findall(t))
        if cjk + latin > 2000:
            break
    return "zh" if cjk * 5 >= latin and cjk > 0 else "en"


def old_metrics(text):
    han, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if han and han * 4 >= latin:
        return "zh"
    return "en" if latin else None


def old_safety(text):
    return "zh" if re.search(r"[\u3400-\u9fff\uf900-\ufaff]", text) else "en"


def old_coders(text):
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if re.match(r"[\u4e00-\u9fff]", c))
    return "zh" if cjk / len(letters) >= 0.3 else "en"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("我最近睡得不好。", "zh"),
        ("I sleep badly these days.", "en"),
        ("OK，我明白你的意思了，谢谢", "zh"),
        ("我觉得OK", "zh"),
        ("I read 《红楼梦》 sometimes, a classic novel that my teacher recommended.", "en"),
        ("I really love 你 and everything else here", "en"),
        ("一二 abcdefghij", "zh"),  # 2 CJK x 5 >= 10 Latin letters: the threshold itself
        ("一二 abcdefghijk", "en"),
        ("😀 ... 123", "en"),
    ],
)
def test_one_threshold(text, expected):
    assert LATIN_PER_CJK == 5
    assert detect_language(text) == expected
    assert detect_language([text]) == expected


def test_no_letters_gives_the_default():
    assert detect_language("😀 ... 123", None) is None
    assert detect_language("", "zh") == "zh"


def test_many_texts_stop_counting_after_2000_letters():
    assert detect_language(["你" * 2001, "a" * 100_000]) == "zh"
    assert detect_language(["a" * 2001, "你" * 100_000]) == "en"


@pytest.mark.parametrize("language", ["en", "zh"])
def test_demo_corpus_classified_as_before(language):
    """Every dialogue, turn and coded utterance of the demo corpus: the same language from
    the one guess as from each old one (and the dialogue's own language, whole)."""
    n = 0
    for d in demo_dialogues(language):
        texts = [t.text for t in d.turns]
        assert detect_language(texts) == old_importers(texts) == d.language, d.id
        for t in d.turns:
            for text in [t.text, *(u.text for u in t.codes or [])]:
                n += 1
                new = detect_language(text)
                assert new == old_importers([text]) == old_safety(text) == old_coders(text), (d.id, text)
                assert detect_language(text, None) == old_metrics(text), (d.id, text)
    assert n > 500
