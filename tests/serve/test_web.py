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
