"""The rewrite prompt: data files with a version id, rendering, golden prompts for zh and en.

Regenerate the golden files after a deliberate prompt edit (and bump its version):
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/transcribe/test_prompt.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError
from mi_llm.transcribe.prompt import load_rewrite_prompt, parse_prompt, prepare, render_messages, repair_messages

GOLDEN = Path(__file__).parent / "golden"

FIXTURES = {
    "en": {
        "id": "golden-en",
        "source": "test",
        "language": "en",
        "topic": "smoking",
        "turns": [
            {"role": "counselor", "text": "Hello, what brings you in today?"},
            {"role": "client", "text": "My doctor says I should quit smoking."},
            {"role": "counselor", "text": "You really must quit. Smoking kills."},
            {"role": "client", "text": "I know, but it helps me with stress."},
            {"role": "client", "text": "And my friends all smoke."},
            {"role": "counselor", "text": "That's no excuse. Throw your cigarettes away today."},
            {"role": "client", "text": "I'll think about it."},
        ],
    },
    "zh": {
        "id": "golden-zh",
        "source": "test",
        "language": "zh",
        "topic": None,
        "turns": [
            {"role": "client", "text": "我每天晚上都喝两三瓶啤酒，最近体检说脂肪肝。"},
            {"role": "counselor", "text": "你必须马上戒酒，不然会肝硬化。"},
            {"role": "client", "text": "可是不喝睡不着。"},
            {"role": "counselor", "text": "睡不着也不能喝，这是借口。"},
        ],
    },
}


def rendered(language: str) -> dict:
    prepared = prepare(Dialogue.model_validate(FIXTURES[language]))
    prompt = load_rewrite_prompt(language)
    first = render_messages(prepared, prompt)
    repair = repair_messages(first, '{"turns": []}', "the answer has no turns", prepared.n_client, prompt)
    return {"version_id": prompt.version_id, "messages": first, "repair": repair[-2:]}


@pytest.mark.parametrize("language", ["zh", "en"])
def test_golden_prompt(language):
    got = rendered(language)
    path = GOLDEN / f"rewrite.{language}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    want = json.loads(path.read_text(encoding="utf-8"))
    assert got == want, f"rendered {language} prompt changed; if deliberate, bump its version and UPDATE_GOLDEN=1"


@pytest.mark.parametrize("language", ["zh", "en"])
def test_prompt_content_covers_mi(language):
    p = load_rewrite_prompt(language)
    assert p.version == "mi-rewrite-1" and p.version_id.startswith(f"rewrite.{language}@mi-rewrite-1+")
    system = p.sections["system"]
    words = {
        "en": [
            "Partnership",
            "Acceptance",
            "Compassion",
            "Evocation",
            "Open questions",
            "Affirmations",
            "complex reflections",
            "Summaries",
            "change talk",
            "sustain talk",
            "permission",
            "autonomy".capitalize(),
            "confront",
            "client turn",
        ],
        "zh": [
            "合作",
            "接纳",
            "关怀",
            "唤起",
            "开放式提问",
            "肯定",
            "复杂反映",
            "总结",
            "改变语句",
            "维持语句",
            "征得同意",
            "自主",
            "对质",
            "来访者话轮",
        ],
    }[language]
    missing = [w for w in words if w not in system]
    assert not missing, missing
    assert '{"turns": [{"role": "client"' in system  # the answer format


def test_prepare_makes_alternating_turns_starting_with_client():
    p = prepare(Dialogue.model_validate(FIXTURES["en"]))
    assert p.dropped_leading_counselor == 1 and p.merged_turns == 1
    assert [r for r, _ in p.turns] == ["client", "counselor", "client", "counselor", "client"]
    assert p.turns[2][1] == "I know, but it helps me with stress.\nAnd my friends all smoke."
    assert p.n_client == 3
    user = render_messages(p)[1]["content"]
    assert "exactly 3 client turns" in user and "(6 turns in all)" in user and "topic: smoking" in user


def test_unknown_topic_and_version_change_on_edit():
    p = prepare(Dialogue.model_validate(FIXTURES["zh"]))
    assert "主题：未注明" in render_messages(p)[1]["content"]
    text = (Path(__file__).parents[2] / "src/mi_llm/prompts/rewrite.zh.txt").read_text(encoding="utf-8")
    edited = parse_prompt(text.replace("简短自然", "简短"), "zh")
    assert edited.version == load_rewrite_prompt("zh").version
    assert edited.version_id != load_rewrite_prompt("zh").version_id  # the content hash shows the edit


@pytest.mark.parametrize(
    "text,msg",
    [
        ("=== system ===\nx\n=== user ===\ny\n=== repair ===\nz\n", "version"),
        ("# version: 1\n=== system ===\nx\n=== user ===\ny\n", "missing section"),
        ("# version: 1\nhello\n=== system ===\n", "before the first"),
    ],
)
def test_bad_prompt_files(text, msg):
    with pytest.raises(MiLlmError, match=msg):
        parse_prompt(text, "en")


def test_unknown_placeholder_and_language():
    p = parse_prompt(
        "# version: 1\n=== system ===\n{{nope}}\n=== user ===\n{{dialogue}}\n=== repair ===\n{{error}}\n", "en"
    )
    with pytest.raises(MiLlmError, match="unknown placeholder"):
        p.fill("system")
    with pytest.raises(MiLlmError, match="no rewrite prompt"):
        load_rewrite_prompt("fr")
