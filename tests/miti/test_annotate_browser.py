"""The human coding tool end to end in headless Chromium: open, split/merge, code with keys,
rate globals, save, reload (state kept), restart the server (state kept), export, agree."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.miti.reliability import agreement, read_coder_file
from tests.conftest import import_setup, needs_setup

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    needs_setup(
        CHROMIUM.exists(),
        "headless Chromium absent: install the Debian packages chromium chromium-driver (make browser)",
    ),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]

SESSIONS = [
    {
        "id": "s1",
        "source": "test",
        "language": "en",
        "topic": "smoking",
        "style": "mi",
        "meta": {"target_behaviour": "quit smoking"},
        "turns": [
            {"role": "client", "text": "I smoke about a pack a day."},
            {"role": "counselor", "text": "You smoke a pack a day. What worries you about it?"},
            {"role": "client", "text": "My kids see me do it."},
            {
                "role": "counselor",
                "text": "Your kids matter a lot to you. It's your choice what happens next. Thanks for telling me.",
            },
            {"role": "client", "text": "I quit once for a month."},
            {"role": "counselor", "text": "That took real effort and you kept going for a month"},
        ],
    },
    {
        "id": "s2",
        "source": "test",
        "language": "zh",
        "topic": "饮酒",
        "style": "mi",
        "turns": [
            {"role": "client", "text": "我每天都喝一点。"},
            {"role": "counselor", "text": "喝酒已经成了你每天的习惯。你自己怎么看？"},
        ],
    },
]

EXPECTED_S1 = {
    1: [("You smoke a pack a day.", "SR"), ("What worries you about it?", "Q")],
    3: [
        ("Your kids matter a lot to you.", "CR"),
        ("It's your choice what happens next.", "EA"),
        ("Thanks for telling me.", None),
    ],
    5: [("That took real effort", "AF"), ("and you kept going for a month", "CR")],
}
EXPECTED_GLOBALS = {"cct": 4, "sst": 3, "partnership": 5, "empathy": 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, sessions: Path, out: Path, port: int):
        self.args = [
            sys.executable,
            "-m",
            "mi_llm",
            "miti",
            "annotate",
            str(sessions),
            "--coder-name",
            "alice",
            "--port",
            str(port),
            "--out",
            str(out),
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _badges(page) -> dict[int, list[tuple[str, str | None]]]:
    out: dict[int, list[tuple[str, str | None]]] = {}
    for row in page.query_selector_all(".utt"):
        t = int(row.get_attribute("data-t"))
        text = "".join(s.inner_text() for s in row.query_selector_all(".tok")).strip()
        badge = row.query_selector(".badge").inner_text().strip()
        out.setdefault(t, []).append((text, None if badge == "–" else badge))
    return out


def _globals(page) -> dict[str, int | None]:
    out = {}
    for row in page.query_selector_all(".grow"):
        sel = row.query_selector("button.selected")
        out[row.get_attribute("data-key")] = int(sel.inner_text()) if sel else None
    return out


def _wait_saved(page) -> None:
    page.wait_for_selector('#save-status[data-state="saved"]', timeout=10_000)


def test_code_save_reload_restart_export(tmp_path):
    sync_api = import_setup("playwright.sync_api", "Python Playwright")
    sessions = tmp_path / "sessions.jsonl"
    sessions.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in SESSIONS), encoding="utf-8")
    out = tmp_path / "alice.jsonl"
    server = Server(sessions, out, _free_port())
    server.start()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector(".utt.active")
            assert page.inner_text("#session-title") == "s1 · smoking"
            assert page.inner_text("#session-target") == "Target behaviour: quit smoking"
            # Pre-split at sentence punctuation, nothing coded yet.
            before = _badges(page)
            assert [t for t, _ in before[1]] == ["You smoke a pack a day.", "What worries you about it?"]
            assert len(before[3]) == 3 and len(before[5]) == 1
            assert all(c is None for us in before.values() for _, c in us)

            # Merge the first two utterances (m), then split them again with the keyboard (s, ->, Enter).
            page.keyboard.press("m")
            assert [t for t, _ in _badges(page)[1]] == ["You smoke a pack a day. What worries you about it?"]
            page.keyboard.press("s")
            page.wait_for_selector(".utt.splitting")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Enter")
            assert [t for t, _ in _badges(page)[1]] == ["You smoke a pack a day.", "What worries you about it?"]

            # Code with the number keys (cursor advances after each code): SR, Q, CR, EA, not coded.
            for key in ("5", "4", "6", "9", "x"):
                page.keyboard.press(key)
            # Split the last turn by clicking between "effort" and "and", then AF, CR.
            page.click('.utt[data-t="5"] .gap[data-k="4"]')
            page.keyboard.press("7")
            page.keyboard.press("6")
            # Globals: g, then 1-5 for CCT, SST, Partnership, Empathy in turn; done.
            page.keyboard.press("g")
            for key in ("4", "3", "5", "4"):
                page.keyboard.press(key)
            page.keyboard.press("Escape")
            page.keyboard.press("d")
            _wait_saved(page)
            assert _badges(page) == EXPECTED_S1
            assert _globals(page) == EXPECTED_GLOBALS
            assert "6/7 coded" in page.inner_text('#session-list li[data-index="0"]')

            # Next session and back with ] and [.
            page.keyboard.press("]")
            # (a locator, not wait_for_function: the page's CSP forbids the eval that needs)
            title = page.locator("#session-title")
            sync_api.expect(title).to_have_text(re.compile(r"^s2"))
            assert [t for t, _ in _badges(page)[1]] == ["喝酒已经成了你每天的习惯。", "你自己怎么看？"]
            page.keyboard.press("[")
            sync_api.expect(title).to_have_text(re.compile(r"^s1"))

            # Reload: the state comes back from the server's autosave.
            page.reload()
            page.wait_for_selector(".utt.active")
            assert _badges(page) == EXPECTED_S1
            assert _globals(page) == EXPECTED_GLOBALS
            assert page.is_checked("#done-box")

            # Restart the server: the state comes back from the SQLite file.
            server.stop()
            server.start()
            page.reload()
            page.wait_for_selector(".utt.active")
            assert _badges(page) == EXPECTED_S1
            assert _globals(page) == EXPECTED_GLOBALS

            # Export from the page.
            page.click("#export-btn")
            page.wait_for_selector('#export-status[data-state="done"]')
            assert "exported 1 session(s)" in page.inner_text("#export-status")
            assert errors == []  # no script errors, no missing assets (nothing from a CDN)
            browser.close()
    finally:
        server.stop()

    exported = read_dialogues(out)
    assert [d.id for d in exported] == ["s1"]  # s2 was never saved, so it is not exported
    d = exported[0]
    assert d.miti_globals is not None and d.miti_globals.model_dump() == EXPECTED_GLOBALS
    assert d.meta["miti_coder"] == "alice" and d.meta["miti_done"] is True
    got = {i: [(u.text, u.code) for u in t.codes] for i, t in enumerate(d.turns) if t.codes is not None}
    assert got == EXPECTED_S1

    # The export feeds `miti agree`: against a hand-written copy of the same coding, kappa is 1.
    ref = tmp_path / "bob.jsonl"
    ref.write_text(d.model_copy(update={"meta": {}}).model_dump_json() + "\n", encoding="utf-8")
    agree = agreement([read_coder_file(out), read_coder_file(ref)])
    assert agree["utterances"]["overall"]["units"] == 7
    assert agree["utterances"]["overall"]["cohen_kappa"] == pytest.approx(1.0)


ATTACK = """<!doctype html><html><body><script>
(async () => {
  const target = "http://127.0.0.1:%(port)d";
  const state = %(state)s;
  const out = {};
  // Cross-site writes a page may send without a preflight: a body with no type, a text/plain form.
  await fetch(target + "/api/sessions/0", {method: "POST", mode: "no-cors", body: new Blob([JSON.stringify(state)])}).catch(() => {});
  await fetch(target + "/api/export", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: "{}"}).catch(() => {});
  // DNS rebinding: this page's own name now points at the server, so these are same-origin reads.
  for (const path of ["/api/meta", "/api/sessions/0"]) {
    try { const r = await fetch(path); out[path] = r.status + " " + (await r.text()).slice(0, 200); }
    catch (e) { out[path] = "error " + e; }
  }
  document.body.dataset.result = JSON.stringify(out);
})();
</script></body></html>"""


def test_other_sites_cannot_read_or_write_the_coding(tmp_path):
    """A page on evil.example (made to resolve to 127.0.0.1, as DNS rebinding does) tries to
    save, export and read; every request reaches the server and is refused."""
    sync_api = import_setup("playwright.sync_api", "Python Playwright")
    sessions = tmp_path / "sessions.jsonl"
    sessions.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in SESSIONS), encoding="utf-8")
    out = tmp_path / "alice.jsonl"
    port = _free_port()
    server = Server(sessions, out, port)
    server.start()
    state = {
        "turns": {str(t): [{"text": x, "code": c} for x, c in us] for t, us in EXPECTED_S1.items()},
        "globals": EXPECTED_GLOBALS,
        "done": True,
    }
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                # Chromium's own Private Network Access block is turned off: other browsers have
                # none, so it is the server's checks that must hold.
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--host-resolver-rules=MAP evil.example 127.0.0.1",
                    "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
                    "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks",
                ],
            )
            page = browser.new_page()
            statuses: dict[str, int] = {}
            page.on("response", lambda r: statuses.setdefault(r.request.method + " " + r.url, r.status))
            page.route(
                "**/attack.html",
                lambda route: route.fulfill(
                    content_type="text/html", body=ATTACK % {"port": port, "state": json.dumps(state)}
                ),
            )
            page.goto(f"http://evil.example:{port}/attack.html")
            page.wait_for_selector("body[data-result]", state="attached", timeout=15_000)
            result = json.loads(page.get_attribute("body", "data-result"))
            browser.close()
    finally:
        server.stop()
    # The requests got to the server and were refused by its checks, not by the browser.
    assert statuses[f"POST http://127.0.0.1:{port}/api/sessions/0"] == 415, statuses
    assert statuses[f"POST http://127.0.0.1:{port}/api/export"] == 415, statuses
    for path in ("/api/meta", "/api/sessions/0"):
        assert result[path].startswith("421 "), result
        assert "smoke" not in result[path] and "alice" not in result[path]
    assert not out.exists()
    server.start()  # nothing was saved
    try:
        meta = httpx.get(server.url + "/api/meta").json()
    finally:
        server.stop()
    assert all(s["saved_at"] is None for s in meta["sessions"])
