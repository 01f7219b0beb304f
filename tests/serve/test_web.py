"""The web chat page in headless Chromium: send a message, watch the reply stream in."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import import_setup, require_setup
from tests.serve.conftest import KEY, RecordingEngine

CHROMIUM = os.environ.get("MI_LLM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    require_setup(
        os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM),
        f"chromium not installed at {CHROMIUM} (apt-get install chromium chromium-driver)",
    )
    sync_api = import_setup("playwright.sync_api", "Python Playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _no_page_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_send_message_and_see_streamed_reply(browser, start_server):
    from playwright.sync_api import expect

    engine = RecordingEngine(delay=0.15)  # slow enough to watch the reply grow
    server, _, store = start_server(engine=engine)
    page = browser.new_page()
    errors = _no_page_errors(page)  # CSP violations (inline script, eval) show up here
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else external.append(r.url))
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("echo-test")
    page.fill("#input", "I would like to walk more")
    page.press("#input", "Enter")
    expect(page.locator(".msg.user")).to_have_text("I would like to walk more")
    reply = page.locator(".msg.assistant").last
    # Part of the reply shows while it is still streaming ...
    page.wait_for_selector(".msg.assistant.streaming")
    seen_partial = None
    for _ in range(200):
        text, cls = reply.text_content(), reply.get_attribute("class") or ""
        if "streaming" not in cls:
            break
        if text.startswith("You said:"):
            seen_partial = text
            break
        page.wait_for_timeout(20)
    assert seen_partial is not None and seen_partial != "You said: I would like to walk more"
    # ... and the whole of it at the end.
    page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=15000)
    assert reply.text_content() == "You said: I would like to walk more"
    assert external == [] and errors == []  # nothing from outside the server, no CSP violation
    # The conversation is on the server: a reload shows it again.
    page.reload()
    expect(page.locator(".msg")).to_have_count(2)
    storage = page.context.storage_state()["origins"][0]["localStorage"]
    session_id = next(x["value"] for x in storage if x["name"] == "mi-llm-session")
    assert len(store.history(session_id)) == 2
    page.close()


def test_crisis_reply_is_marked_and_key_is_asked_for(browser, start_server):
    from playwright.sync_api import expect

    server, engine, _ = start_server(api_key=KEY)
    page = browser.new_page()
    errors = _no_page_errors(page)
    page.goto(server.url + "/")
    page.wait_for_selector("#keybox:not([hidden])")
    page.fill("#key", KEY)
    page.click("#savekey")
    expect(page.locator("#model")).to_have_text("echo-test")
    page.fill("#input", "我想一了百了")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.crisis:not(.streaming)")
    assert "400-161-9995" in page.locator(".msg.assistant.crisis").text_content()
    assert engine.calls == []
    # 401s while the key was missing are the only errors the page may log.
    assert all("401" in e for e in errors), errors
    page.close()


def test_strategy_code_and_check_in_are_shown(browser, start_server):
    """serve --strategy: the reply's MITI code as a badge (not part of the reply's text), kept
    after a reload; a low-risk message: the answer marked as carrying a check-in, not a crisis."""
    from playwright.sync_api import expect

    from mi_llm.build.strategy import Strategy
    from mi_llm.serve.engine import StrategyEngine
    from mi_llm.serve.safety.layer import SafetyLayer
    from mi_llm.serve.safety.risk import RiskClassifier
    from tests.serve.test_safety_learned import _Fixed
    from tests.serve.test_strategy import PiecesEngine

    engine = StrategyEngine(PiecesEngine(["[CR]", " It", " weighs on you."]), Strategy.parse("model"))
    safety = SafetyLayer(RiskClassifier(detector=_Fixed({"no point anymore": (0.6, "active_ideation")})))  # type: ignore[arg-type]
    server, _, _ = start_server(engine=engine, safety=safety)
    page = browser.new_page()
    errors = _no_page_errors(page)
    page.goto(server.url + "/")
    page.fill("#input", "no point anymore")  # the first message: the detector reads it alone
    page.press("#input", "Enter")
    checked = page.locator(".msg.assistant:not(.streaming)").last
    expect(checked).to_have_attribute("data-level", "low")
    assert "checkin" in checked.get_attribute("class") and "crisis" not in checked.get_attribute("class")
    assert "988" in checked.text_content()  # the model answered, the check-in follows
    page.fill("#input", "I keep putting it off")
    page.press("#input", "Enter")
    expect(page.locator(".msg.assistant:not(.streaming)")).to_have_count(2)
    reply = page.locator(".msg.assistant").last
    expect(reply).to_have_attribute("data-code", "CR")
    assert reply.text_content() == "It weighs on you."  # the badge is drawn, not written into the text
    assert reply.get_attribute("data-level") is None
    assert (
        page.evaluate("getComputedStyle(document.querySelectorAll('.msg.assistant')[1], '::before').content") == '"CR"'
    )
    page.reload()  # the codes come back with the session
    expect(page.locator(".msg.assistant[data-code='CR']")).to_have_count(2)
    assert errors == []
    page.close()
