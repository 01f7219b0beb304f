"""Per-counselor aggregates with confidence intervals, the reference rows, and the sessions
report (standalone `mi-llm simulate` folder and the run report's section): scripted
counselors and clients, no model loaded."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mi_llm.corpus.schema import read_dialogues
from mi_llm.layout import ReportPaths, SimulatePaths
from mi_llm.report import ReportData, write_report
from mi_llm.report.render import write_simulation_report
from mi_llm.report.sessions import change_share_by_round, read_simulation, stage_by_round
from mi_llm.simulate.aggregate import BOOTSTRAP_RESAMPLES, aggregate_outcomes, mean_ci
from mi_llm.simulate.cards import load_personas
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.outcomes import write_outcomes
from mi_llm.simulate.references import (
    PUBLISHED,
    annomi_reference,
    reference_rows,
    shipped_annomi_reference,
)
from mi_llm.simulate.runner import simulate
from tests.conftest import needs_setup
from tests.simulate.conftest import CONFRONTATIONAL, REFLECTIVE, KeywordTalkCoder, ScriptedClient, ScriptedCounselor

ANNOMI = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "annomi"


def simulated(folder: Path, miti_coder, lines, sessions: int = 4) -> Path:
    cfg = SimulateConfig(sessions=sessions, max_rounds=6, retry_wait_s=0, personas="demo:en")
    simulate(cfg, load_personas(cfg.personas), ScriptedCounselor(lines), ScriptedClient(), miti_coder, folder)
    paths = SimulatePaths(folder)
    write_outcomes(
        paths.outcomes, read_dialogues(paths.sessions), miti_coder, KeywordTalkCoder(), coded_path=paths.coded
    )
    return folder


# ---------------------------------------------------------------- intervals


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_sessions():
    few = mean_ci([0.2, 0.8, 0.5, 0.4])
    many = mean_ci([0.2, 0.8, 0.5, 0.4] * 10)
    assert few["n"] == 4 and few["mean"] == pytest.approx(0.475)
    assert few["ci_low"] < few["mean"] < few["ci_high"]
    assert 0.2 <= few["ci_low"] and few["ci_high"] <= 0.8  # a mean of resamples stays in the data's range
    assert many["ci_high"] - many["ci_low"] < few["ci_high"] - few["ci_low"]
    assert mean_ci([0.2, 0.8, 0.5, 0.4]) == few  # seeded: the same sessions, the same interval
    assert BOOTSTRAP_RESAMPLES >= 1000


def test_undefined_values_are_counted_not_averaged_and_one_value_has_no_interval():
    stats = mean_ci([None, 1.0, None])
    assert stats == {"n": 1, "missing": 2, "mean": 1.0, "ci_low": None, "ci_high": None}
    assert mean_ci([None])["mean"] is None


def test_success_rate_is_the_mean_of_sessions_successes():
    outcomes = [{"success": True, "r_q": 1.0}, {"success": False, "r_q": None}, {"success": True, "r_q": 3.0}]
    agg = aggregate_outcomes(outcomes)
    assert agg["success"]["mean"] == pytest.approx(2 / 3, abs=1e-4) and agg["success"]["n"] == 3
    assert agg["r_q"]["mean"] == 2.0 and agg["r_q"]["missing"] == 1


def test_outcomes_carry_the_aggregate_and_the_coded_sessions(tmp_path, miti_coder):
    folder = simulated(tmp_path, miti_coder, REFLECTIVE)
    report = json.loads(SimulatePaths(folder).outcomes.read_text())
    assert report["version"] == 2 and "bootstrap" in report["ci_method"]
    assert report["aggregate"]["success"]["n"] == report["summary"]["sessions"] == 4
    assert report["aggregate"]["rounds"]["mean"] == report["summary"]["mean_rounds"]
    coded = read_dialogues(SimulatePaths(folder).coded)
    assert [d.id for d in coded] == [o["id"] for o in report["sessions"]]
    assert all(t.talk for d in coded for t in d.turns if t.role == "client")


# ---------------------------------------------------------------- references


def test_reference_rows_published_and_computed():
    rows = reference_rows(["success", "r_q", "pct_cr", "change_share"])
    published = [r for r in rows if r["kind"] == "published"]
    computed = [r for r in rows if r["kind"] == "computed"]
    assert [r["label"] for r in published] == list(PUBLISHED)
    assert published[0]["cells"]["r_q"] == "0.56" and "CAMI" in published[0]["source"]
    assert [r["label"].split()[1] for r in computed] == ["high-quality", "low-quality"]
    for r in computed:
        assert re.fullmatch(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", r["cells"]["r_q"])
        assert "success" not in r["cells"]  # no success in real transcripts


def test_shipped_annomi_reference_separates_high_from_low_quality():
    rows = shipped_annomi_reference()["rows"]
    assert rows["high"]["transcripts"] > rows["low"]["transcripts"] > 0
    assert rows["high"]["r_q"]["ci_low"] > rows["low"]["r_q"]["ci_high"]
    assert rows["high"]["change_share"]["mean"] > rows["low"]["change_share"]["mean"]


@pytest.mark.skipif(not (ANNOMI / "AnnoMI-full.csv").is_file(), reason="../shared/data/annomi not present")
def test_shipped_annomi_reference_is_what_the_data_gives():
    assert annomi_reference(ANNOMI) == shipped_annomi_reference()


# ---------------------------------------------------------------- trajectories


def test_trajectories_by_round():
    outcomes = [
        {"client_talk": ["neutral", "sustain", "change"], "stages": ["precontemplation", "contemplation"]},
        {"client_talk": ["sustain", "change", "change", "change"], "stages": ["contemplation"] * 3 + ["preparation"]},
    ]
    assert change_share_by_round(outcomes) == [(0, 0.0, 1), (1, 0.5, 2), (2, 1.0, 2), (3, 1.0, 1)]
    # the first session ended after round 1: it keeps contemplation (1) in rounds 2 and 3
    assert stage_by_round(outcomes) == [(0, 0.5), (1, 1.0), (2, 1.0), (3, 1.5)]


# ---------------------------------------------------------------- the report


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.hrefs


def test_standalone_simulation_report_with_a_page_per_session(tmp_path, miti_coder):
    folder = simulated(tmp_path / "sim", miti_coder, REFLECTIVE)
    index = write_simulation_report(folder, title="scripted reflective")
    assert index == SimulatePaths(folder).report
    html = index.read_text(encoding="utf-8")
    assert "Simulated sessions: scripted reflective" in html and 'id="sessions-table"' in html
    assert html.count("data:image/png;base64,") == 1 and SimulatePaths(folder).figure("trajectories").is_file()
    assert "CAMI" in html and "AnnoMI high-quality" in html and "bootstrap" in html
    assert 'id="toy-client"' not in html  # the scripted client is no embedded model
    outcomes = json.loads(SimulatePaths(folder).outcomes.read_text())
    pages = [index.parent / h for h in links(index)]
    assert sorted(p.name for p in pages) == sorted(f"{o['id']}.html" for o in outcomes["sessions"])
    for page, o in zip(sorted(pages), sorted(outcomes["sessions"], key=lambda o: o["id"])):
        text = page.read_text(encoding="utf-8")
        assert o["end_reason"] in text and o["persona_id"] in text and o["final_stage"] in text
        assert REFLECTIVE["en"][0].replace("'", "&#39;") in text  # the counselor's words, escaped
        assert 'class="code"' in text and "receptivity" in text
        assert (page.parent / links(page)[0]).resolve() == index.resolve()  # back to the report


def test_run_report_has_a_sessions_section_for_each_counselor(tmp_path, miti_coder):
    good = read_simulation(simulated(tmp_path / "good", miti_coder, REFLECTIVE), "m base")
    bad = read_simulation(simulated(tmp_path / "bad", miti_coder, CONFRONTATIONAL), "m finetuned")
    bad.meta["client"] = {"backend": "llamacpp", "model": {"name": "gemma-3-270m", "source": "embedded"}}
    data = ReportData(name="unit", simulations={"m base": good, "m finetuned": bad})
    index = write_report(data, tmp_path / "report")
    html = index.read_text(encoding="utf-8")
    assert 'id="sessions"' in html and 'id="toy-client"' in html
    rows = re.findall(r'<tr class="counselor"><td>([^<]+)</td>', html)
    assert rows == ["m base", "m finetuned"]
    for sim in (good, bad):
        for o in sim.outcomes["sessions"]:
            page = ReportPaths(tmp_path / "report").session_page(sim.label, o["id"])
            assert page.is_file() and f"{page.parent.name}/{page.name}" in html
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert (
        summary["simulate"]["m base"]["aggregate"]["success"]["mean"] == good.outcomes["aggregate"]["success"]["mean"]
    )
    # the scripted reflective counselor earns plans, the confrontational one does not
    assert good.outcomes["aggregate"]["success"]["mean"] > bad.outcomes["aggregate"]["success"]["mean"] == 0


@needs_setup(shutil.which("chromium") is not None, "Debian chromium (make browser installs it)")
def test_simulation_report_and_a_session_page_render_in_chromium(tmp_path, miti_coder):
    from playwright.sync_api import sync_playwright

    folder = simulated(tmp_path / "sim", miti_coder, REFLECTIVE, sessions=2)
    index = write_simulation_report(folder, title="scripted reflective")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        assert page.locator("#sessions-table tr.counselor").count() == 1
        assert page.eval_on_selector("img", "e => e.naturalWidth") > 100
        page.locator(".session-list a").first.click()  # the session's page, and back
        assert page.locator("table.turns tr.turn-counselor").count() >= 1
        page.locator("a").first.click()
        assert page.url == index.as_uri()
        browser.close()
    assert errors == []
