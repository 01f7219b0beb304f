"""Terminal chat: streaming, history, /reset, /save, safety, resuming a session."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.serve.chat import ChatSession, run_chat
from mi_llm.serve.safety.layer import SafetyLayer
from mi_llm.serve.sessions import SessionStore
from tests.serve.conftest import RecordingEngine


def scripted(lines):
    it = iter(lines)

    def read(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_chat_history_reset_save_and_safety(tmp_path):
    engine = RecordingEngine()
    chat = ChatSession(engine, SafetyLayer(), GenerationConfig(max_new_tokens=50))
    out = io.StringIO()
    saved = tmp_path / "conv.json"
    n = run_chat(
        chat,
        scripted(
            [
                "I smoke a lot",
                "I want to stop",
                "我不想活了",
                f"/save {saved}",
                "/reset",
                "hello again",
                "/bogus",
                "/quit",
                "never read",
            ]
        ),
        out,
    )
    assert n == 4
    text = out.getvalue()
    assert "You said: I smoke a lot" in text and "400-161-9995" in text and "(conversation cleared)" in text
    assert "unknown command /bogus" in text
    # The second call saw the first exchange; the crisis message never reached the model.
    assert [m["role"] for m in engine.calls[1]] == ["system", "user", "assistant", "user"]
    assert len(engine.calls) == 3 and engine.calls[2][1:] == [{"role": "user", "content": "hello again"}]
    data = json.loads(saved.read_text())
    assert data["flagged"] is True and data["flag_category"] == "suicide" and len(data["messages"]) == 6
    assert data["language"] == "en"  # from the first message


def test_chat_session_resumes_from_the_store(tmp_path):
    db = tmp_path / "s.sqlite3"
    store = SessionStore(db)
    chat = ChatSession(RecordingEngine(), SafetyLayer(), GenerationConfig(), store=store, session_id="me")
    run_chat(chat, scripted(["first message", "My husband beats me"]), io.StringIO())
    store.close()
    store2 = SessionStore(db)
    engine = RecordingEngine()
    chat2 = ChatSession(engine, SafetyLayer(), GenerationConfig(), store=store2, session_id="me")
    out = io.StringIO()
    run_chat(chat2, scripted(["third"]), out)
    assert "(resumed: 2 earlier exchanges)" in out.getvalue()
    assert chat2.flagged and chat2.flag_category == "abuse"
    assert [m["content"] for m in engine.calls[0][1:]][0] == "first message"
    assert len(engine.calls[0]) == 6  # system + 2 exchanges + new
    store2.close()


def test_chat_cli_with_echo_backend(tmp_path):
    saved = tmp_path / "c.json"
    r = subprocess.run(
        [sys.executable, "-m", "mi_llm", "chat", "--backend", "echo", "--language", "zh"],
        input=f"你好\n/save {saved}\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "counselor> You said: 你好" in r.stdout
    assert json.loads(saved.read_text())["language"] == "zh"
