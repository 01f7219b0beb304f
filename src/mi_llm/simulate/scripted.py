"""Scripted counselors for the separation check: a reflective one (reflections, autonomy
support, no advice) and a confrontational one (persuasion without permission, confrontation).

They are backends that answer from a fixed list by the number of counselor turns so far, in
the language of the counselor's system prompt: a known-good and a known-poor counselor, so
the harness can be checked to give the good one better outcomes (docs/simulate.md,
"Separation"; benchmarks/bench_simulate_separation.py). No model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages

LINES: dict[str, dict[str, list[str]]] = {
    "reflective": {
        "en": [
            "It sounds like you are torn: part of you enjoys it, and part of you worries where it is heading.",
            "It is completely up to you what, if anything, you change.",
            "So on one hand it helps you relax, and on the other hand it is starting to cost you.",
            "You care a lot about the people close to you, and you want to be there for them.",
            "You have thought about this more than people give you credit for.",
            "Whatever you decide, you are the one who knows your life best.",
        ],
        "zh": [
            "听起来你一方面觉得它能让你放松，另一方面又担心它对家人的影响。",
            "要不要改变，完全由你自己决定。",
            "你对家人非常在乎，想好好陪着他们。",
            "你其实已经为这件事想了很多。",
            "一方面你不想被别人管着，另一方面你自己也开始有些担心了。",
            "不管你最后怎么决定，最了解自己生活的人是你。",
        ],
    },
    "confrontational": {
        "en": [
            "You should quit; it is killing you and you know it.",
            "That is just an excuse. You need to take responsibility.",
            "You have to stop right now, there is no other way.",
        ],
        "zh": [
            "你必须马上戒掉，你这是在自欺欺人。",
            "你应该停下来，这样下去会害了你。",
            "这都是借口，你得对自己负责。",
        ],
    },
}


def _language(messages: Messages) -> str:
    system = messages[0]["content"] if messages else ""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in system) else "en"


class ScriptedCounselor(Backend):
    """`ScriptedCounselor("reflective")` or `("confrontational")`: reply k is line k of the list."""

    name = "scripted"

    def __init__(self, style: str):
        if style not in LINES:
            raise ValueError(f"no scripted counselor {style!r} (one of {', '.join(LINES)})")
        self.style = style

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        out = []
        for messages in batch:
            lines = LINES[self.style][_language(messages)]
            k = sum(1 for m in messages if m["role"] == "assistant")
            out.append(Completion(lines[k % len(lines)], 0, 0, "stop"))
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "style": self.style}
