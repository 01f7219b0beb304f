"""`mi-llm simulate` against OpenAI-compatible endpoints: a stand-in server that fails some
conversations (retried with backoff, then that session fails and the run goes on), and our
own `mi-llm serve` app (integration)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.layout import SIMULATED_FAILED, SIMULATED_SESSIONS
from mi_llm.llm.backends.base import GenerationConfig
from mi_llm.llm.backends.openai_api import OpenAIBackend
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.runner import simulate
from mi_llm.simulate.scripted import ScriptedCounselor
from tests.fuzz.helpers import run_cli
from tests.simulate.test_simulate import card, write_cards

Reply = Callable[[list[dict[str, str]]], tuple[int, str]]  # messages -> (HTTP status, text)


class StandIn:
    """A minimal OpenAI-compatible chat server in a thread."""

    def __init__(self, reply: Reply):
        self.reply = reply
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, text = outer.reply(body["messages"])
                if status == 200:
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                    }
                else:
                    payload = {"error": {"message": text, "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def reflective_counselor(messages: list[dict[str, str]]) -> tuple[int, str]:
    [c] = ScriptedCounselor("reflective").generate([messages], GenerationConfig())
    return 200, c.text


class FailingClient:
    """Answers as a client; 503 for every conversation whose prompt holds `marker` (counted)."""

    def __init__(self, marker: str):
        self.marker = marker
        self.failures = 0
        self.answered: Counter[int] = Counter()  # by the client turn answered

    def __call__(self, messages: list[dict[str, str]]) -> tuple[int, str]:
        if self.marker in messages[0]["content"]:
            self.failures += 1
            return 503, "overloaded"
        turn = sum(m["role"] == "assistant" for m in messages)
        self.answered[turn] += 1
        return 200, f"Turn {turn}: I am not sure."


@pytest.fixture
def endpoints() -> Iterator[tuple[StandIn, StandIn, FailingClient]]:
    failing = FailingClient("client number 1.")
    with StandIn(reflective_counselor) as counselor, StandIn(failing) as client:
        yield counselor, client, failing


def test_a_failing_endpoint_is_retried_then_its_session_fails_and_the_run_goes_on(tmp_path, endpoints, miti_coder):
    counselor_server, client_server, failing = endpoints
    cards = [card(id=f"c{i}", persona=[f"You are client number {i}."]) for i in range(3)]
    cfg = SimulateConfig(
        sessions=3,
        max_rounds=3,
        retries=2,
        personas=str(write_cards(tmp_path / "cards.jsonl", cards)),
        counselor_url=counselor_server.url,
        client_url=client_server.url,
    )
    counselor = OpenAIBackend("counselor", base_url=counselor_server.url, max_retries=cfg.retries)
    client = OpenAIBackend("client", base_url=client_server.url, max_retries=cfg.retries)
    try:
        res = simulate(cfg, load_personas(cfg.personas), counselor, client, miti_coder, tmp_path / "out")
    finally:
        counselor.close()
        client.close()
    assert [f["id"] for f in res.failed] == ["sim00001-c1"]
    assert res.failed[0]["error"].startswith("client: ") and "503" in res.failed[0]["error"]
    assert res.written_now == 2
    # the failing conversation was tried 1 + retries times (with the client's backoff), then left
    assert failing.failures == cfg.retries + 1
    assert failing.answered[0] == 2  # the other two sessions' openings, asked together with it
    sessions = read_dialogues(tmp_path / "out" / SIMULATED_SESSIONS)
    assert sorted(d.meta["persona_id"] for d in sessions) == ["c0", "c2"]
    assert all(d.meta["rounds"] >= 1 for d in sessions)
    failed = [json.loads(x) for x in (tmp_path / "out" / SIMULATED_FAILED).read_text().splitlines()]
    assert failed == res.failed


@pytest.mark.integration  # the MITI and client-talk coders read the embedded model
def test_simulate_against_our_own_server(tmp_path):
    """Both sides are `mi-llm serve`'s app in-process (its echo engine: the whole serving
    stack, API, worker and session store, without a model's cost), through the CLI."""
    from mi_llm.serve.api import BackgroundServer, ServeConfig, create_app
    from mi_llm.serve.engine import build_engine
    from mi_llm.serve.sessions import SessionStore

    engine = build_engine("echo", "echo-counselor")
    store = SessionStore(tmp_path / "s.sqlite3")
    out = tmp_path / "sim"
    try:
        with BackgroundServer(create_app(engine, ServeConfig(), store)) as server:
            url = server.url + "/v1"
            argv = ["simulate", "-o", str(out), "--personas", "demo:en", "--sessions", "2", "--max-rounds", "2"]
            argv += ["--counselor-url", url, "--counselor", engine.model_id, "--client-url", url]
            argv += ["--client", engine.model_id]
            r = run_cli(argv)
    finally:
        store.close()
        engine.close()
    assert r.code == 0, r.err
    sessions = read_dialogues(out / SIMULATED_SESSIONS)
    assert len(sessions) == 2 and all(1 <= d.meta["rounds"] <= 2 for d in sessions)
    # the echo engine repeats the other side's last turn: each reply went through the server
    for d in sessions:
        for before, turn in zip(d.turns[1:], d.turns[2:]):
            assert before.text in turn.text
    meta = json.loads((out / "sessions.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["counselor"]["backend"] == "openai" and meta["counselor"]["base_url"].startswith(url)
    fidelity = json.loads((out / "fidelity.json").read_text(encoding="utf-8"))
    assert fidelity["simulated"]["en"]["client_turns"] == sum(len(d.meta["stages"]) for d in sessions)
    assert "simulator fidelity" in " ".join(r.err.split())  # the table (rich console: stderr)


def test_an_endpoint_client_is_a_toy_only_when_it_serves_the_embedded_model():
    from mi_llm.llm.resolve import DEFAULT_MODEL
    from mi_llm.report.sessions import Simulation

    # the openai backend describes its model by the served name (a string)
    assert not Simulation("x", {}, meta={"client": {"backend": "openai", "model": "gpt-4o-mini"}}).toy_client
    assert Simulation("x", {}, meta={"client": {"backend": "openai", "model": DEFAULT_MODEL}}).toy_client
