import json
import shutil

from mi_llm.report import ReportData, write_report
from mi_llm.report.data import AutoRow, Example
from tests.conftest import needs_setup


def sample_data() -> ReportData:
    def session(q, sr, cr, gi):
        counts = {"Q": q, "SR": sr, "CR": cr, "GI": gi}
        refl = sr + cr
        return {"counts": counts, "summary": {"r_q": refl / q if q else None, "pct_cr": cr / refl if refl else None}}

    data = ReportData(name="unit")
    data.auto_rows = [
        AutoRow("tiny", "base", "en", 10, {"bleu-4": 2.5, "rouge-1": 10.0, "rouge-2": 1.0, "rouge-l": 8.0}),
        AutoRow("tiny", "finetuned", "en", 10, {"bleu-4": 6.0, "rouge-1": 20.0, "rouge-2": 4.0, "rouge-l": 15.0}),
    ]
    data.miti_sessions = {"base": [session(3, 1, 0, 2), session(2, 0, 0, 4)], "finetuned": [session(2, 2, 2, 0)]}
    data.miti_aggregate = {
        "base": {
            "r_q": {"mean": 0.33, "median": 0.33, "q1": 0.33, "q3": 0.33, "n": 1, "missing": 1},
            "pct_cr": {"mean": None, "missing": 2},
        },
        "finetuned": {
            "r_q": {"mean": 2.0, "median": 2.0, "q1": 2.0, "q3": 2.0, "n": 1, "missing": 0},
            "pct_cr": {"mean": 0.5, "median": 0.5, "q1": 0.5, "q3": 0.5, "n": 1},
        },
    }
    data.loss_curves = {"tiny": [(1, 3.0), (2, 2.5), (3, 2.1)]}
    data.examples = [
        Example("zh", "d1#1", "我想戒烟<script>", "你想改变。", {"base": "好", "finetuned": "听起来你很想改变。"})
    ]
    return data


def test_report_files_and_tables(tmp_path):
    index = write_report(sample_data(), tmp_path)
    html = index.read_text()
    assert "Table 1" in html and "Table 2" in html
    assert "&lt;script&gt;" in html  # conversation text is escaped
    assert html.count("data:image/png;base64,") == 3
    for png in ("behaviour_counts.png", "ratios.png", "loss.png"):
        assert (tmp_path / png).stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["automatic"][1]["scores"]["bleu-4"] == 6.0
    assert "undefined" in html  # missing ratios are reported, not shown as 0
    assert 'class="num good"' in html  # R:Q 2.0 reaches the "good" threshold


@needs_setup(shutil.which("chromium") is not None, "Debian chromium (make browser installs it)")
def test_report_renders_in_chromium_without_console_errors(tmp_path):
    from playwright.sync_api import sync_playwright

    index = write_report(sample_data(), tmp_path)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        assert page.locator("#auto-table tr").count() == 3
        assert page.locator("#miti-table").is_visible()
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 3 and all(w > 100 for w in widths)
        browser.close()
    assert errors == []
