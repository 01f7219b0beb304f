"""Scripted backends and coders for the simulate tests: no model is loaded."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mi_llm.llm.backends.base import Backend, Completion, GenerationConfig, Messages

REFLECTIVE = {
    "en": [
        "It sounds like you are torn: part of you enjoys it, and part of you worries where it is heading.",
        "It is completely up to you what, if anything, you change.",
        "So on one hand it helps you relax, and on the other hand it is starting to cost you.",
    ],
    "zh": [
        "听起来你一方面觉得它能让你放松，另一方面又担心它对家人的影响。",
        "要不要改变，完全由你自己决定。",
        "你对家人非常在乎，想好好陪着他们。",
    ],
}
CONFRONTATIONAL = {
    "en": [
        "You should quit; it is killing you and you know it.",
        "That is just an excuse. You need to take responsibility.",
    ],
    "zh": ["你必须马上戒掉，你这是在自欺欺人。", "你应该停下来，这样下去会害了你。"],
}


def _language(messages: Messages) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in messages[0]["content"]) else "en"


class ScriptedCounselor(Backend):
    """Replies from a fixed list, by the number of counselor turns so far."""

    name = "scripted-counselor"

    def __init__(self, lines: dict[str, list[str]]):
        self.lines = lines
        self.calls: list[int] = []  # batch sizes

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        self.calls.append(len(batch))
        out = []
        for messages in batch:
            lines = self.lines[_language(messages)]
            k = sum(1 for m in messages if m["role"] == "assistant")
            out.append(Completion(lines[k % len(lines)], 10, 10, "stop"))
        return out


class ScriptedClient(Backend):
    """Says which action it was asked for (the line after the prompt's action heading); fails
    on conversations that contain `fail_on`."""

    name = "scripted-client"

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.calls: list[int] = []

    def generate(self, batch: Sequence[Messages], config: GenerationConfig) -> list[Completion]:
        self.calls.append(len(batch))
        if self.fail_on and any(self.fail_on in m["content"] for messages in batch for m in messages):
            raise ConnectionError("endpoint unreachable")
        out = []
        for messages in batch:
            system = messages[0]["content"]
            action = next(
                (line.split(":", 1)[1].strip() for line in system.splitlines() if line.startswith("How you answer")),
                "",
            )
            turn = sum(1 for m in messages if m["role"] == "assistant")
            out.append(Completion(f"Turn {turn}: I {action}", 10, 10, "stop"))
        return out


class KeywordTalkCoder:
    """A client-talk coder for tests: change talk when the client admits or plans."""

    name = "client-talk:keywords"

    def code(self, items: Sequence[object]) -> list[str]:
        out = []
        for it in items:
            text = str(getattr(it, "text", ""))
            out.append(
                "change"
                if any(w in text for w in ("concern", "change", "will do"))
                else "sustain"
                if any(w in text for w in ("deny", "refuse", "doubt", "not as bad"))
                else "neutral"
            )
        return out


@pytest.fixture(scope="session")
def miti_coder():
    from mi_llm.miti.coders import load_coder

    return load_coder("default")
