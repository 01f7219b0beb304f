"""`chat` / `serve --strategy`: the tag cut from streamed replies, its code stored with each
reply, forced codes begun as the assistant's turn, a policy fed the session's codes."""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mi_llm.build.strategy import Strategy, TagStripper
from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.serve.chat import ChatSession, run_chat
from mi_llm.serve.engine import ChatEngine, Finish, Messages, StrategyEngine
from mi_llm.serve.safety.layer import SafetyLayer
from mi_llm.serve.sessions import SessionStore
from tests.serve.conftest import KEY, openai_client
from tests.serve.test_chat import scripted


class PiecesEngine(ChatEngine):
    """Streams `pieces` as the reply; remembers the conversations it was given."""

    name = "pieces"
    model_id = "pieces"

    def __init__(self, pieces: list[str]):
        self.pieces, self.calls = pieces, []

    def stream(
        self, messages: Messages, config: GenerationConfig, cancel: threading.Event | None = None
    ) -> Iterator[str | Finish]:
        self.calls.append([dict(m) for m in messages])
        yield from self.pieces
        yield Finish("stop", 3, len(self.pieces))


@pytest.mark.parametrize(
    "pieces, reply, code",
    [
        (["[SR]", " You", " feel torn."], "You feel torn.", "SR"),
        (["[", "C", "R] ", "It ", "weighs on you."], "It weighs on you.", "CR"),
        ([" [Q]What", " now?"], "What now?", "Q"),
        (["[note] hi"], "[note] hi", None),
        (["Plain", " reply."], "Plain reply.", None),
        (["[CR]"], "", "CR"),
        (["[unfinished"], "[unfinished", None),
    ],
)
def test_tag_stripper(pieces: list[str], reply: str, code: str | None) -> None:
    s = TagStripper()
    out = "".join(s.feed(p) for p in pieces) + s.flush()
    assert out == reply and s.code == code


def run(engine: ChatEngine, messages: Messages) -> tuple[str, Finish]:
    return engine.complete(messages, GenerationConfig())


def test_model_strategy_cuts_the_tag() -> None:
    inner = PiecesEngine(["[SR] ", "You feel ", "torn."])
    text, finish = run(StrategyEngine(inner, Strategy.parse("model")), [{"role": "user", "content": "hi"}])
    assert text == "You feel torn." and finish.code == "SR" and inner.calls[0][-1]["role"] == "user"


def test_forced_code_begins_the_turn_and_codes_never_reach_the_model() -> None:
    inner = PiecesEngine([" It weighs on you."])
    engine = StrategyEngine(inner, Strategy.parse("CR"))
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "code": "Q"},
        {"role": "user", "content": "c"},
    ]
    text, finish = run(engine, history)
    assert text == "It weighs on you." and finish.code == "CR"
    assert inner.calls[0][-1] == {"role": "assistant", "content": "[CR]"}
    assert all(set(m) == {"role", "content"} for m in inner.calls[0])


def test_chat_policy_reads_and_stores_the_codes(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("opening: Q\nreflections_per_question: 2\nreflection: CR\n")
    db = tmp_path / "s.sqlite3"
    store = SessionStore(db)
    inner = PiecesEngine(["Go on."])
    engine = StrategyEngine(inner, Strategy.parse(f"policy:{policy}"))
    chat = ChatSession(engine, SafetyLayer(), GenerationConfig(), store=store, session_id="me")
    out = io.StringIO()
    run_chat(chat, scripted(["one", "two", "three"]), out)
    assert [c[-1]["content"] for c in inner.calls] == ["[Q]", "[CR]", "[CR]"]
    assert "Go on.  (Q)" in out.getvalue()  # chat shows the code after the reply
    assert [m.get("code") for m in store.history("me") if m["role"] == "assistant"] == ["Q", "CR", "CR"]
    assert all(m["content"] == "Go on." for m in store.history("me") if m["role"] == "assistant")
    store.close()
    # a resumed session goes on from the stored codes
    store2 = SessionStore(db)
    chat2 = ChatSession(engine, SafetyLayer(), GenerationConfig(), store=store2, session_id="me")
    run_chat(chat2, scripted(["four"]), io.StringIO())
    assert inner.calls[-1][-1]["content"] == "[Q]"
    store2.close()


def test_an_old_session_database_gets_the_code_column(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE messages (session_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, "
        "content TEXT NOT NULL, created REAL NOT NULL, safety TEXT, PRIMARY KEY (session_id, seq));"
    )
    con.close()
    store = SessionStore(db)
    store.open("s", "local")
    store.append("s", [{"role": "user", "content": "u"}, {"role": "assistant", "content": "r", "code": "SR"}])
    assert store.history("s")[1] == {"role": "assistant", "content": "r", "code": "SR"}
    store.close()


def test_server_returns_and_stores_the_code(start_server) -> None:
    engine = StrategyEngine(PiecesEngine(["[AF] ", "You came back."]), Strategy.parse("model"))
    server, _, store = start_server(engine=engine, api_key=KEY)
    client = openai_client(server)
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"session_id": "s1"}
    )
    assert r.choices[0].message.content == "You came back." and r.model_extra["mi_llm"]["code"] == "AF"
    assert store.history("s1")[-1] == {"role": "assistant", "content": "You came back.", "code": "AF"}
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You came back."
    assert any((c.model_extra.get("mi_llm") or {}).get("code") == "AF" for c in chunks)
