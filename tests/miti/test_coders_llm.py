"""The LLM-prompted coder against a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mi_llm.errors import MiLlmError
from mi_llm.miti.coders.base import Item
from mi_llm.miti.coders.llm import LLMCoder, normalize_code, parse_codes, parse_globals, parse_spec, prompt_sections
from mi_llm.resources import demo_dialogues


class FakeOpenAI:
    """Answers chat completions with `reply(messages) -> str`; records every request."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[list[dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with threading.Lock():
                    outer.requests.append(body["messages"])
                text = outer.reply(body["messages"])
                data = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _n_utterances(messages) -> int:
    user = [m for m in messages if m["role"] == "user"][0]["content"]
    return sum(1 for line in user.splitlines() if line[:1].isdigit() and ". " in line[:4])


def _is_globals(messages) -> bool:
    return '"cct"' in messages[0]["content"]


@pytest.fixture
def server():
    servers = []

    def make(reply):
        s = FakeOpenAI(reply)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _coder(url, **kw):
    coder = LLMCoder.from_spec("llm:openai:fake-model", base_url=url, max_retries=0)
    for k, v in kw.items():
        setattr(coder, k, v)
    return coder


def test_parsers():
    assert parse_codes('{"codes": ["Q", null, "complex reflection"]}', 3) == ["Q", None, "CR"]
    assert parse_codes('```json\n{"codes": ["sr"]}\n```', 1) == ["SR"]
    assert parse_codes('Here: {"codes": ["Persuade with Permission"]} done', 1) == ["PwP"]
    with pytest.raises(ValueError, match="expected 2"):
        parse_codes('{"codes": ["Q"]}', 2)
    with pytest.raises(ValueError, match="unknown code"):
        parse_codes('{"codes": ["Reframe"]}', 1)
    with pytest.raises(ValueError, match="not a JSON"):
        parse_codes("Q", 1)
    assert normalize_code("null") is None and normalize_code("Seeking Collaboration") == "Seek"
    g = parse_globals('{"cct": 4, "sst": "3", "partnership": 5.0, "empathy": 2}')
    assert (g.cct, g.sst, g.partnership, g.empathy) == (4, 3, 5, 2)
    with pytest.raises(ValueError, match="between 1 and 5"):
        parse_globals('{"cct": 6, "sst": 3, "partnership": 5, "empathy": 2}')
    with pytest.raises(ValueError, match="integer"):
        parse_globals('{"cct": 4, "sst": 3, "partnership": 5}')
    assert parse_spec("llm:openai:qwen2.5:7b") == ("openai", "qwen2.5:7b")
    with pytest.raises(MiLlmError):
        parse_spec("llm:openai")


@pytest.mark.parametrize("language", ["zh", "en"])
def test_prompt_files_have_every_section(language):
    p = prompt_sections(language)
    assert "$context" in p["volley"].template and "$utterances" in p["volley"].template
    assert "$transcript" in p["session"].template and "$error" in p["retry"].template


def test_codes_a_dialogue_and_rates_globals(server):
    def reply(messages):
        if _is_globals(messages):
            return '{"cct": 4, "sst": 5, "partnership": 4, "empathy": 3}'
        return json.dumps({"codes": ["CR"] * _n_utterances(messages)})

    s = server(reply)
    d = demo_dialogues("zh", "mi")[0]
    out = _coder(s.url).code_dialogues([d], resegment=True)[0]
    counselor = [t for t in out.turns if t.role == "counselor"]
    assert all(u.code == "CR" for t in counselor for u in t.codes)
    assert (out.miti_globals.cct, out.miti_globals.sst, out.miti_globals.empathy) == (4, 5, 3)
    assert out.meta["miti_coder"] == "llm:openai:fake-model" and "miti_coder_errors" not in out.meta
    # one request per volley plus one for the globals; Chinese prompts for a Chinese dialogue
    assert len(s.requests) == len(counselor) + 1
    assert all("咨询师" in r[0]["content"] for r in s.requests)
    # the volley requests carry the client's previous turn as context (requests arrive in any order)
    assert any(d.turns[0].text in r[1]["content"] for r in s.requests)


def test_invalid_answers_are_asked_again(server):
    calls = {"n": 0}

    def reply(messages):
        calls["n"] += 1
        if len(messages) == 2:  # first try: broken JSON, then an unknown code
            return "Sure! The code is Q"
        if len(messages) == 4:
            return '{"codes": ["Reframe"]}'
        assert "unknown code" in messages[-1]["content"]  # the error went back to the model
        return '{"codes": ["Q"]}'

    s = server(reply)
    coder = _coder(s.url, retries=2)
    res = coder.code_utterances([{"text": "What brings you here?", "language": "en"}])
    assert res == ["Q"]
    assert calls["n"] == 3 and coder.stats["retries"] == 2 and coder.stats["failures"] == 0


def test_answers_still_invalid_after_retries_are_recorded(server):
    s = server(lambda m: '{"cct": 9}' if _is_globals(m) else '{"codes": ["Reframe"]}')
    coder = _coder(s.url, retries=1)
    results = coder.code_items([Item("Hi.", "", "en")])
    assert results[0].code is None and "unknown code 'Reframe'" in results[0].error
    assert len(s.requests) == 2  # asked, then asked once again
    d = demo_dialogues("en", "mi")[0]
    out = coder.code_dialogues([d])[0]
    assert out.miti_globals is None and "between 1 and 5" in out.meta["miti_coder_errors"]["globals"]
    bad = [t for t in out.turns if t.meta.get("miti_coder_errors")]
    assert bad and all(u.code is None for t in bad for u in t.codes)
    assert out.meta["miti_coder_errors"]["utterances"] == sum(len(t.codes) for t in bad)
