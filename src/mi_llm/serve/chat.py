"""Terminal chat with the counselor: streamed replies, history, /reset, /save, /quit.

Every user message passes the safety layer first; a high-risk message gets the fixed safe
response (not the model's) and flags the conversation; a low-risk one gets the model's reply
followed by the layer's check-in, and flags it too. With a session id the conversation
is kept in the session database and resumes next time (the same store as `mi-llm serve`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mi_llm.corpus.language import detect_language
from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.prompts import load_prompt
from mi_llm.serve.engine import ChatEngine, Finish
from mi_llm.serve.protocol import conversation
from mi_llm.serve.safety.layer import SafetyLayer
from mi_llm.serve.sessions import SessionStore

HELP = "Commands: /reset (start over), /save FILE (write the conversation as JSON), /help, /quit"


@dataclass
class Turn:
    """What one user message produced."""

    text: str
    crisis: bool = False
    category: str = "none"
    finish: str = "stop"
    code: str | None = None  # the reply's strategy code (--strategy)
    level: str = "none"  # high: the text is the safe response; low: the reply ends with a check-in


@dataclass
class ChatSession:
    engine: ChatEngine
    safety: SafetyLayer
    config: GenerationConfig
    language: str | None = None  # None: from the first message
    system: str | None = None  # None: the MI system prompt of the language
    store: SessionStore | None = None
    session_id: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    flagged: bool = False
    flag_category: str | None = None

    def __post_init__(self) -> None:
        if self.store is not None and self.session_id:
            s = self.store.open(self.session_id, "local", self.language)
            self.language = self.language or s.language
            self.flagged, self.flag_category = s.flagged, s.flag_category
            self.history = [
                {k: v for k, v in m.items() if k in ("role", "content", "code")}
                for m in self.store.history(self.session_id)
            ]

    def messages_for(self, user: str) -> list[dict[str, str]]:
        lang = self.language or detect_language(user)
        return conversation(self.system or load_prompt("system", lang), self.history, user)

    def respond(self, user: str, cancel: threading.Event | None = None) -> Iterator[str | Turn]:
        """Pieces of the reply, then a `Turn` summary. The history grows only when the reply ends."""
        if self.language is None:
            self.language = detect_language(user)
        earlier = [m["content"] for m in self.history if m["role"] == "user"]
        decision = self.safety.check(user, self.language, earlier)
        if decision.level == "high":
            text = decision.response or ""
            cat = decision.result.category
            self.flagged, self.flag_category = True, self.flag_category or cat
            yield text
            self._commit(user, text, cat)
            if self.store is not None and self.session_id:
                self.store.flag(self.session_id, cat, decision.result.matched)
            yield Turn(text, crisis=True, category=cat, level="high")
            return
        parts: list[str] = []
        finish = Finish("stop", 0, 0)
        for item in self.engine.stream(self.messages_for(user), self.config, cancel):
            if isinstance(item, Finish):
                finish = item
            else:
                parts.append(item)
                yield item
        check_in = decision.check_in if decision.crisis else None
        if check_in and finish.reason != "cancelled":  # low risk: the check-in follows the answer
            parts.append(f"\n\n{check_in}")
            yield parts[-1]
        text = "".join(parts)
        if finish.reason != "cancelled":
            flagged = decision.result.category if check_in else None
            self._commit(user, text, flagged, finish.code)
            if flagged:
                self.flagged, self.flag_category = True, self.flag_category or flagged
                if self.store is not None and self.session_id:
                    self.store.flag(self.session_id, flagged, decision.result.matched, decision.level)
        yield Turn(
            text,
            finish=finish.reason,
            crisis=bool(check_in),
            category=decision.result.category if check_in else "none",
            level=decision.level if check_in else "none",
            code=finish.code,
        )

    def _commit(self, user: str, reply: str, category: str | None, code: str | None = None) -> None:
        u: dict[str, str] = {"role": "user", "content": user}
        a: dict[str, str] = {"role": "assistant", "content": reply, **({"code": code} if code else {})}
        self.history += [dict(u), dict(a)]
        if self.store is not None and self.session_id:
            if category:
                u["safety"] = a["safety"] = category
            self.store.append(self.session_id, [u, a], self.language)

    def reset(self) -> None:
        self.history = []
        if self.store is not None and self.session_id:
            self.store.reset(self.session_id)

    def save(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        write_json(
            path,
            {
                "model": self.engine.model_id,
                "language": self.language,
                "session_id": self.session_id,
                "flagged": self.flagged,
                "flag_category": self.flag_category,
                "saved": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "messages": self.history,
            },
        )
        return path


def run_chat(
    session: ChatSession, read: Callable[[str], str] = input, out: TextIO | None = None, banner: str | None = None
) -> int:
    """The read-reply loop; returns the number of messages answered."""
    import sys

    out = out or sys.stdout
    write = out.write
    if read is input and sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    if banner:
        write(banner + "\n")
    write(HELP + "\n")
    if session.history:
        write(f"(resumed: {len(session.history) // 2} earlier exchanges)\n")
    answered = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/quit", "/exit", "/q"):
                break
            if cmd == "/reset":
                session.reset()
                write("(conversation cleared)\n")
            elif cmd == "/save":
                if not arg.strip():
                    write("usage: /save FILE\n")
                    continue
                try:
                    write(f"(saved to {session.save(arg.strip())})\n")
                except (OSError, MiLlmError) as e:
                    write(f"(could not save: {e})\n")
            elif cmd == "/help":
                write(HELP + "\n")
            else:
                write(f"unknown command {cmd}. {HELP}\n")
            continue
        cancel = threading.Event()
        write("counselor> ")
        out.flush()
        stream = session.respond(text, cancel)
        try:
            for item in stream:
                if isinstance(item, Turn):
                    if item.level == "low":
                        write("\n(safety: this conversation has been flagged; a check-in was added to the reply)")
                    elif item.crisis:
                        write(
                            "\n(safety: this conversation has been flagged; the reply above is a fixed safety message)"
                        )
                    elif item.finish == "length":
                        write(" [...]")
                    if item.code:  # the strategy the reply followed (its tag, cut from the text)
                        write(f"  ({item.code})")
                    continue
                write(item)
                out.flush()
        except KeyboardInterrupt:
            cancel.set()
            _drain(stream)
            write(" [interrupted]")
        except MiLlmError as e:
            write(f"\n(error: {e})")
        write("\n")
        answered += 1
    return answered


def _drain(stream: Iterator[Any]) -> None:
    """Let a cancelled engine finish its stream (it ends at the next token)."""
    try:
        for _ in stream:
            pass
    except KeyboardInterrupt:
        pass
