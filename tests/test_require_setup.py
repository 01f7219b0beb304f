"""tests/conftest.py's set-up helpers: a test whose set-up is missing skips locally and fails
under CI=true (a skip there would hide a broken set-up)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, import_setup, require_setup


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_setup_skips_outside_ci(monkeypatch, ci) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    require_setup(True, "present")  # nothing happens
    with pytest.raises(pytest.skip.Exception, match="set-up missing: chromium"):
        require_setup(False, "chromium")
    with pytest.raises(pytest.skip.Exception, match="no_such_module_for_mi_llm"):
        import_setup("no_such_module_for_mi_llm")


@pytest.mark.parametrize("ci", ["true", "True", "1"])
def test_missing_setup_fails_under_ci(monkeypatch, ci) -> None:
    monkeypatch.setenv("CI", ci)
    require_setup("/usr/bin/something", "a truthy value is present")
    with pytest.raises(pytest.fail.Exception, match="under CI=true: chromium"):
        require_setup(False, "chromium")
    with pytest.raises(pytest.fail.Exception, match="Python Playwright"):
        import_setup("no_such_module_for_mi_llm", "Python Playwright")
    assert import_setup("json").dumps([]) == "[]"


PROBE = """
import pytest
from tests.conftest import needs_setup, require_setup

pytestmark = needs_setup(True, "module-level set-up present")


@needs_setup(False, "marker: converter not cached")
def test_marker():
    pass


@pytest.fixture()
def browser():
    require_setup(False, "fixture: chromium absent")


def test_in_fixture(browser):
    pass


def test_fine():
    pass


def test_legitimate_skip():
    pytest.skip("data absent: stays a skip under CI")
"""


# pytest reports a failure in set-up (the marker's check and fixtures) as an error: the run fails.
@pytest.mark.parametrize(
    ("ci", "expected", "rc"),
    [("", {"passed": 1, "skipped": 3}, 0), ("true", {"passed": 1, "error": 2, "skipped": 1}, 1)],
)
def test_marker_and_fixture_forms_in_a_real_pytest_run(tmp_path, ci, expected, rc) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
            "-rA",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", r.stdout.splitlines()[-1])}
    assert counts == expected and r.returncode == rc, r.stdout[-3000:]
    if ci:
        assert "set-up missing under CI=true: marker: converter not cached" in r.stdout
        assert "set-up missing under CI=true: fixture: chromium absent" in r.stdout
