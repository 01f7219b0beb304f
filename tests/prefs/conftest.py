"""A scripted backend and a keyword coder, so preference building runs without a model."""

from __future__ import annotations

from pathlib import Path

from mi_llm.build.samples import Sample
from mi_llm.io import write_jsonl
from mi_llm.llm.backends import Backend, Completion
from mi_llm.miti.coders.base import Coder, Result


class KeywordCoder(Coder):
    """CR for 'sounds like', SR for 'you feel', Q for '?', Persuade for 'you should'."""

    name = "keywords"

    def code_items(self, items, progress=None):
        out = []
        for it in items:
            t = it.text.lower()
            code = (
                "CR"
                if "sounds like" in t
                else "SR"
                if "you feel" in t
                else "Q"
                if "?" in t
                else "Persuade"
                if "you should" in t
                else "GI"
            )
            out.append(Result(code))
        return out


# Replies by sample index: a complex reflection, a question, advice, and a degenerate one.
REPLIES = [
    "It sounds like the stress at work is keeping you from the rest you need.",
    "What would you like to change first about your evenings?",
    "You should simply stop working late and go to bed earlier.",
    "ok",
]


class ScriptedBackend(Backend):
    """Cycles through REPLIES per conversation copy; can fail at a given call to simulate a crash."""

    name = "hf"  # copies in one call differ, as with hf

    def __init__(self, fail_at_call: int | None = None, name: str = "hf") -> None:
        self.name = name
        self.calls = 0
        self.prompts = 0
        self.fail_at_call = fail_at_call
        self.closed = False

    def generate(self, batch, config):
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise KeyboardInterrupt
        self.prompts += len(batch)
        out = []
        for i, _ in enumerate(batch):
            text = REPLIES[(i + (config.seed or 0)) % len(REPLIES)]
            out.append(Completion(text, 50, len(text.split()), "stop"))
        return out

    def describe(self):
        return {"backend": self.name, "model": {"name": "scripted"}, "parallel": 1}

    def close(self) -> None:
        self.closed = True


def make_rounds(path: Path, n: int = 6) -> Path:
    samples = [
        Sample(
            sample_id=f"d{i}#1",
            dialogue_id=f"d{i}",
            round=1,
            language="en",
            source="t",
            system="You are an MI counselor.",
            history=[("I have been tired.", "You feel worn out.")] if i % 2 else [],
            query=f"Work keeps me up late every night, number {i}.",
            response="It sounds like work is taking your nights.",
        )
        for i in range(n)
    ]
    write_jsonl(path, samples)
    return path
